package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// checkRiffleMount says what dir is when it is not a mount made by riffle
// mount, so that unmount explains itself instead of the kernel's "invalid
// argument" (EINVAL is all umount2 says about a directory that is not a
// mount point).
func checkRiffleMount(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("unmount: %w", err)
	}
	if _, err := os.Stat(abs); err != nil {
		return fmt.Errorf("unmount: %w", err)
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil // let the unmount itself report
	}
	defer f.Close()
	fstype := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || unescapeMountinfo(fields[4]) != abs {
			continue
		}
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) {
				fstype = fields[i+1] // the last mount on abs is the visible one
			}
		}
	}
	switch {
	case fstype == "":
		return fmt.Errorf("unmount: %s is not a mount point; nothing to unmount", dir)
	case fstype != "fuse.riffle":
		return fmt.Errorf("unmount: %s is a %s mount, not one made by riffle mount; use umount", dir, fstype)
	}
	return nil
}

// unescapeMountinfo undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
