//go:build race

package streamfs_test

const raceEnabled = true
