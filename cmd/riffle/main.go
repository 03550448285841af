// Command riffle is the single Riffle binary: the server and the CLI.
package main

import (
	"errors"
	"os"
)

func main() {
	stopProfiling := startProfiling()
	err := newRootCmd().Execute()
	stopProfiling()
	if err != nil {
		// riffle run exits with its container's code.
		var ec exitCodeError
		if errors.As(err, &ec) {
			os.Exit(ec.code)
		}
		os.Exit(1)
	}
}
