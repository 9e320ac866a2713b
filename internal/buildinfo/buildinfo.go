// Package buildinfo tells which qslice this is: version, VCS revision and build date, from the
// build information the Go toolchain embeds (runtime/debug.ReadBuildInfo). That works for
// `go build` in a checkout (vcs.revision, vcs.time, vcs.modified), for `go install module@vX`
// (the module version, and for a pseudo-version its commit and time) and for the release script,
// which may set Version with -ldflags "-X github.com/qslice/qslice/internal/buildinfo.version=v1.2.3".
package buildinfo

import (
	"fmt"
	"regexp"
	"runtime"
	"runtime/debug"
	"time"
)

// version overrides the module version when set with -ldflags -X (release builds of a tag).
var version = ""

// Unknown stands for a field the build did not record.
const Unknown = "unknown"

// Info describes one build.
type Info struct {
	Version   string `json:"version"`    // v1.2.3, a pseudo-version, or "dev" for a local build
	Revision  string `json:"revision"`   // VCS commit (full, or the 12 digits of a pseudo-version); "unknown"
	Date      string `json:"date"`       // commit time, RFC 3339 UTC; "unknown"
	Modified  bool   `json:"modified"`   // built from a work tree with uncommitted changes
	GoVersion string `json:"go_version"` // the Go toolchain
}

// Get returns this binary's build information.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return From(bi, version)
}

// pseudo matches the tail of a Go pseudo-version: yyyymmddhhmmss-abcdefabcdef.
var pseudo = regexp.MustCompile(`(?:^|[.-])(\d{14})-([0-9a-f]{12})(?:\+incompatible)?$`)

// From derives Info from build information (nil: none embedded) and an -ldflags version ("":
// none). It is pure, for tests.
func From(bi *debug.BuildInfo, ldVersion string) Info {
	in := Info{Version: "dev", Revision: Unknown, Date: Unknown, GoVersion: runtime.Version()}
	if bi == nil {
		if ldVersion != "" {
			in.Version = ldVersion
		}
		return in
	}
	if bi.GoVersion != "" {
		in.GoVersion = bi.GoVersion
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		in.Version = v
		if m := pseudo.FindStringSubmatch(v); m != nil {
			in.Revision = m[2]
			if t, err := time.Parse("20060102150405", m[1]); err == nil {
				in.Date = t.UTC().Format(time.RFC3339)
			}
		}
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			in.Revision = s.Value
		case "vcs.time":
			in.Date = s.Value
		case "vcs.modified":
			in.Modified = s.Value == "true"
		}
	}
	if ldVersion != "" {
		in.Version = ldVersion
	}
	return in
}

// String is the one-line form `qslice version` and --version print.
func (in Info) String() string {
	rev := in.Revision
	if in.Modified {
		rev += "-dirty"
	}
	return fmt.Sprintf("%s (revision %s, commit date %s, %s)", in.Version, rev, in.Date, in.GoVersion)
}
