//go:build race

package main

// raceEnabled builds the binary under test with -race too, so that the
// end-to-end tests also catch data races in the server.
const raceEnabled = true
