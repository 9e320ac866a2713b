package buildinfo

import (
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

func TestFrom(t *testing.T) {
	vcs := func(kv ...string) []debug.BuildSetting {
		var s []debug.BuildSetting
		for i := 0; i+1 < len(kv); i += 2 {
			s = append(s, debug.BuildSetting{Key: kv[i], Value: kv[i+1]})
		}
		return s
	}
	cases := []struct {
		name string
		bi   *debug.BuildInfo
		ld   string
		want Info
	}{
		{"no build info", nil, "", Info{Version: "dev", Revision: Unknown, Date: Unknown}},
		{"no build info, ldflags", nil, "v1.0.0", Info{Version: "v1.0.0", Revision: Unknown, Date: Unknown}},
		{"go build in a checkout", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"},
			Settings: vcs("vcs.revision", "0123456789abcdef0123456789abcdef01234567", "vcs.time", "2026-12-01T10:00:00Z", "vcs.modified", "true")}, "",
			Info{Version: "dev", Revision: "0123456789abcdef0123456789abcdef01234567", Date: "2026-12-01T10:00:00Z", Modified: true}},
		{"go install of a tag", &debug.BuildInfo{Main: debug.Module{Version: "v1.4.2"}}, "",
			Info{Version: "v1.4.2", Revision: Unknown, Date: Unknown}},
		{"go install of a commit", &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261201100000-0123456789ab"}}, "",
			Info{Version: "v0.0.0-20261201100000-0123456789ab", Revision: "0123456789ab", Date: "2026-12-01T10:00:00Z"}},
		{"pseudo-version after a tag", &debug.BuildInfo{Main: debug.Module{Version: "v1.4.3-0.20261201100000-0123456789ab"}}, "",
			Info{Version: "v1.4.3-0.20261201100000-0123456789ab", Revision: "0123456789ab", Date: "2026-12-01T10:00:00Z"}},
		{"release script", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"},
			Settings: vcs("vcs.revision", "abc", "vcs.time", "2026-12-01T10:00:00Z", "vcs.modified", "false")}, "v2.0.0",
			Info{Version: "v2.0.0", Revision: "abc", Date: "2026-12-01T10:00:00Z"}},
	}
	for _, c := range cases {
		got := From(c.bi, c.ld)
		got.GoVersion = ""
		if got != c.want {
			t.Errorf("%s: From = %+v, want %+v", c.name, got, c.want)
		}
	}
}

// A binary built with `go build` in this repository carries its commit: the real toolchain,
// not a fake BuildInfo.
func TestBuiltBinaryKnowsItsRevision(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary")
	}
	rev, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skipf("not in a git checkout: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "qslice")
	if out, err := exec.Command("go", "build", "-buildvcs=true", "-o", bin, "github.com/qslice/qslice/cmd/qslice").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	meta, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		t.Fatalf("go version -m: %v", err)
	}
	if !strings.Contains(string(meta), "vcs.revision="+strings.TrimSpace(string(rev))) {
		// The go command stamps nothing in some layouts (a linked git worktree, for one).
		t.Skipf("go build recorded no vcs.revision here:\n%s", meta)
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("qslice version: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), strings.TrimSpace(string(rev))) {
		t.Errorf("qslice version = %q, want revision %s", out, rev)
	}
}
