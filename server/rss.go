package server

import (
	"bytes"
	"os"
	"strconv"
)

// residentMemory returns the process's resident set size in bytes from
// /proc/self/statm, or 0 where that file does not exist.
func residentMemory() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	fields := bytes.Fields(b)
	if len(fields) < 2 {
		return 0
	}
	pages, err := strconv.ParseUint(string(fields[1]), 10, 64)
	if err != nil {
		return 0
	}
	return pages * uint64(os.Getpagesize())
}
