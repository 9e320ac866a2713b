package testenv

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Unprivileged makes a test that needs file permissions to be enforced run as an ordinary user.
// Run as an ordinary user, it returns false and the test goes on in this process. Run as root
// (CI runs as root, and root ignores file modes), it runs this test again in a copy of the test
// binary as the user "nobody", reports that run's output, fails when the run failed or skipped,
// and returns true: the caller returns at once.
//
// Only top-level tests can be re-run (call it first thing in TestXxx), and the test must need
// nothing that "nobody" cannot read: its files come from t.TempDir.
func Unprivileged(t *testing.T) bool {
	t.Helper()
	if os.Geteuid() != 0 {
		return false
	}
	if strings.Contains(t.Name(), "/") {
		t.Fatalf("testenv.Unprivileged: %s is a subtest; call it from a top-level test", t.Name())
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("running as root, and there is no user nobody to run %s as: %v", t.Name(), err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)

	// The go tool builds the binary in a directory only root can enter: run a copy.
	dir, err := os.MkdirTemp("", "qslice-unprivileged-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	tmp := filepath.Join(dir, "tmp")
	bin := filepath.Join(dir, filepath.Base(os.Args[0]))
	if err := copyExecutable(os.Args[0], bin); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(tmp, uid, gid); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-test.run=^"+regexp.QuoteMeta(t.Name())+"$", "-test.v", "-test.count=1")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp, "HOME="+tmp)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	runErr := cmd.Run()
	t.Logf("re-ran %s as user nobody (uid %d), since root ignores file permissions:\n%s", t.Name(), uid, out.String())
	switch {
	case runErr != nil:
		t.Fatalf("%s as user nobody failed: %v", t.Name(), runErr)
	case strings.Contains(out.String(), "--- SKIP: "+t.Name()):
		t.Fatalf("%s skipped as user nobody: a permission test must run in CI", t.Name())
	case !strings.Contains(out.String(), "--- PASS: "+t.Name()):
		t.Fatalf("%s did not run as user nobody (no PASS line)", t.Name())
	}
	return true
}

func copyExecutable(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}
