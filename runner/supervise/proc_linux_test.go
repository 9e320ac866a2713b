package supervise

import (
	"syscall"
	"testing"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		in    string
		state byte
		pgrp  int
		ok    bool
	}{
		{in: "123 (sleep) S 1 120 120 0 -1", state: 'S', pgrp: 120, ok: true},
		{in: "123 (a) b) (c) Z 1 77 77 0", state: 'Z', pgrp: 77, ok: true},
		{in: "123 (weird name with spaces) R 5 9 9", state: 'R', pgrp: 9, ok: true},
		{in: "garbage", ok: false},
		{in: "1 (x) S 1", ok: false},
	}
	for _, tt := range tests {
		state, pgrp, ok := parseStat([]byte(tt.in))
		if state != tt.state || pgrp != tt.pgrp || ok != tt.ok {
			t.Errorf("parseStat(%q) = %c %d %v, want %c %d %v", tt.in, state, pgrp, ok, tt.state, tt.pgrp, tt.ok)
		}
	}
}

func TestLiveMemberSeesOwnGroup(t *testing.T) {
	alive, err := liveMember(syscall.Getpgrp())
	if err != nil || !alive {
		t.Fatalf("liveMember(own group) = %v, %v; want true", alive, err)
	}
	if !procfsUsable() {
		t.Fatal("procfsUsable() = false on Linux")
	}
}
