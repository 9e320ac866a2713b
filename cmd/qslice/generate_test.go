package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// `qslice generate` writes a man page for every command users see (none for hidden ones), pages
// man(1) renders without warnings, and completion scripts that complete from the real binary.
func TestGenerate(t *testing.T) {
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	t.Setenv("SOURCE_DATE_EPOCH", "1780000000") // 2026-05-28
	code := run(context.Background(), []string{"generate", "--man", filepath.Join(dir, "man"),
		"--bash-completion", filepath.Join(dir, "bash", "qslice"),
		"--zsh-completion", filepath.Join(dir, "_qslice"),
		"--fish-completion", filepath.Join(dir, "qslice.fish")}, nil, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("generate: exit %d: %s", code, stderr.String())
	}

	// One page per available command, named as man(1) looks it up.
	var want []string
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if !c.IsAvailableCommand() && c.HasParent() {
			return
		}
		want = append(want, strings.ReplaceAll(c.CommandPath(), " ", "-")+".1")
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCmd(&globals{}))
	for _, name := range want {
		b, err := os.ReadFile(filepath.Join(dir, "man", name))
		if err != nil {
			t.Errorf("man page: %v", err)
			continue
		}
		if !bytes.HasPrefix(b, []byte(`.nh`)) || !bytes.Contains(b, []byte(`.TH "`)) || !bytes.Contains(b, []byte("May 2026")) {
			t.Errorf("%s: no .TH header dated by SOURCE_DATE_EPOCH:\n%.300s", name, b)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "man", "qslice-generate.1")); err == nil {
		t.Error("the hidden generate command got a man page")
	}
	for _, name := range []string{"qslice.1", "qslice-run.1", "qslice-config-check.1", "qslice-mailman-import.1"} {
		if !slices.Contains(want, name) {
			t.Errorf("no page %s among %v", name, want)
		}
	}

	t.Run("man", func(t *testing.T) {
		man, err := exec.LookPath("man")
		if err != nil {
			t.Skipf("man missing (install the Debian package man-db): %v", err)
		}
		cmd := exec.Command(man, "--warnings=all", "-l", filepath.Join(dir, "man", "qslice.1"))
		cmd.Env = append(os.Environ(), "MANWIDTH=100")
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Run(); err != nil || errOut.Len() > 0 {
			t.Errorf("man -l qslice.1: %v\n%s", err, errOut.String())
		}
		for _, s := range []string{"qslice - Run Mailman-style queue workers", "SEE ALSO", "qslice-run(1)"} {
			if !strings.Contains(out.String(), s) {
				t.Errorf("man -l qslice.1 lacks %q:\n%s", s, out.String())
			}
		}
	})

	zsh, _ := os.ReadFile(filepath.Join(dir, "_qslice"))
	fish, _ := os.ReadFile(filepath.Join(dir, "qslice.fish"))
	if !bytes.HasPrefix(zsh, []byte("#compdef qslice")) {
		t.Errorf("zsh completion does not start with #compdef qslice:\n%.200s", zsh)
	}
	if !bytes.Contains(fish, []byte("complete -c qslice")) {
		t.Errorf("fish completion registers nothing for qslice:\n%.200s", fish)
	}

	// bash: complete "qslice queue s" through bash-completion, asking the real binary.
	t.Run("bash", func(t *testing.T) {
		framework := "/usr/share/bash-completion/bash_completion"
		if _, err := os.Stat(framework); err != nil {
			t.Skipf("bash-completion missing (install the Debian package bash-completion): %v", err)
		}
		bin := buildQslice(t)
		script := `source "$1"; source "$2"
COMP_WORDS=(qslice queue s); COMP_CWORD=2; COMP_LINE="qslice queue s"; COMP_POINT=${#COMP_LINE}
__start_qslice qslice s queue 2>/dev/null
printf '%s\n' "${COMPREPLY[@]}"`
		cmd := exec.Command("bash", "--norc", "--noprofile", "-c", script, "bash", framework, filepath.Join(dir, "bash", "qslice"))
		cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(bin)+string(os.PathListSeparator)+os.Getenv("PATH"))
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("bash completion: %v", err)
		}
		if got := strings.Fields(string(out)); strings.Join(got, " ") != "show stats" {
			t.Errorf("bash completes \"qslice queue s\" to %q, want [show stats]", got)
		}
	})

	if code := run(context.Background(), []string{"generate"}, nil, &stdout, &stderr); code != exitUsage {
		t.Errorf("generate without an output: exit %d, want %d", code, exitUsage)
	}
}
