package sdk

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/qslice/qslice/internal/testenv"
)

// TestPythonLibraryFraming runs the Python library's own unit tests (sdk/python/test_qslice_worker.py):
// frames split at any byte, many in one read, larger than its buffer, all handed over whole and
// answered once; bad input raises a ProtocolError that names it.
func TestPythonLibraryFraming(t *testing.T) {
	py := testenv.RequirePython(t, "json", "python3")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, "-m", "unittest", "-v", "test_qslice_worker")
	cmd.Dir = "python"
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python3 -m unittest test_qslice_worker: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
