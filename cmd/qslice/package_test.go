package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// The Debian package (packaging/nfpm.yaml) holds together without building it: every file it takes
// from the repository exists, the unit runs the binary and reads the configuration the package
// installs, and that configuration passes `qslice config check`. scripts/check-package.sh checks
// the built package installed.
func TestPackageContents(t *testing.T) {
	b, err := os.ReadFile("../../packaging/nfpm.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var pkg struct {
		Contents []struct {
			Src, Dst, Type string
		}
		Scripts map[string]string
	}
	if err := yaml.Unmarshal(b, &pkg); err != nil {
		t.Fatalf("packaging/nfpm.yaml: %v", err)
	}
	installed := map[string]string{} // destination -> type
	for _, c := range pkg.Contents {
		installed[c.Dst] = c.Type
		if strings.Contains(c.Src, "${QSLICE_STAGE}") {
			continue // made by scripts/release.sh
		}
		matches, _ := filepath.Glob(filepath.Join("../..", c.Src))
		if len(matches) == 0 {
			t.Errorf("packaging/nfpm.yaml: %s (for %s) does not exist", c.Src, c.Dst)
		}
	}
	for _, s := range pkg.Scripts {
		if fi, err := os.Stat(filepath.Join("../..", s)); err != nil || fi.Mode()&0o111 == 0 {
			t.Errorf("maintainer script %s: missing or not executable (%v)", s, err)
		}
	}
	for _, conf := range []string{"/etc/qslice/qslice.yaml", "/etc/default/qslice"} {
		if installed[conf] != "config" {
			t.Errorf("%s: type %q, want config (a conffile)", conf, installed[conf])
		}
	}

	unit, err := os.ReadFile("../../examples/qslice.service")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := installed["/lib/systemd/system/qslice.service"]; !ok {
		t.Error("the package installs no /lib/systemd/system/qslice.service")
	}
	var named []string
	for _, m := range regexp.MustCompile(`(?m)^(?:ExecStartPre|ExecStart|EnvironmentFile)=-?(\S+)(.*)$`).FindAllStringSubmatch(string(unit), -1) {
		named = append(named, m[1])
		if c := regexp.MustCompile(`--config (\S+)`).FindStringSubmatch(m[2]); c != nil {
			named = append(named, c[1])
		}
	}
	if len(named) < 4 {
		t.Fatalf("found only %v in the unit's ExecStart, ExecStartPre and EnvironmentFile", named)
	}
	for _, p := range named {
		if _, ok := installed[p]; !ok {
			t.Errorf("the unit names %s, which the package does not install", p)
		}
	}
	if !regexp.MustCompile(`(?m)^User=qslice$`).Match(unit) {
		t.Error("the unit does not run as the package's qslice user")
	}
	sysusers, err := os.ReadFile("../../packaging/sysusers.conf")
	if err != nil || !regexp.MustCompile(`(?m)^u qslice `).Match(sysusers) {
		t.Errorf("packaging/sysusers.conf makes no qslice user (%v)", err)
	}

	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"config", "check", "../../packaging/qslice.yaml"}, nil, &stdout, &stderr); code != 0 {
		t.Errorf("config check packaging/qslice.yaml: exit %d\n%s", code, stderr.String())
	}
}
