// Package testenv finds the real external programs that qslice's tests run against, and skips a
// test with a message saying what to install when one is missing.
package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Python returns a python3 interpreter that can import module, trying $QSLICE_PYTHON3,
// $QSLICE_PYTHON, every python3 on $PATH, then /usr/bin/python3: Debian's packages
// (python3-flufl.lock, mailman3) install for the system interpreter, which a python3 earlier on
// PATH (pyenv, a venv) may not see. It returns "" and what was tried when none can.
func Python(module string) (string, []string) {
	var cands []string
	add := func(p string) {
		if p != "" && !slices.Contains(cands, p) {
			cands = append(cands, p)
		}
	}
	add(os.Getenv("QSLICE_PYTHON3"))
	add(os.Getenv("QSLICE_PYTHON"))
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, "python3")
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			add(p)
		}
	}
	add("/usr/bin/python3")
	var tried []string
	for _, p := range cands {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, p, "-c", "import "+module).CombinedOutput()
		cancel()
		if err == nil {
			return p, nil
		}
		tried = append(tried, fmt.Sprintf("%s: %v %s", p, err, strings.TrimSpace(string(out))))
	}
	return "", tried
}

// RequirePython returns Python(module) or skips t, naming the Debian package that provides it.
func RequirePython(t testing.TB, module, debianPackage string) string {
	t.Helper()
	p, tried := Python(module)
	if p == "" {
		t.Skipf("no python3 that can import %s (install the Debian package %s, or set QSLICE_PYTHON3); tried: %s",
			module, debianPackage, strings.Join(tried, "; "))
	}
	return p
}
