//go:build !race

package qsworker

// raceEnabled: see race_test.go.
const raceEnabled = false
