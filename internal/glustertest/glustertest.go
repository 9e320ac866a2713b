package glustertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// SkipMessage is the reason tests skip when the bed cannot run here.
const SkipMessage = "GlusterFS test bed unavailable (needs root, glusterd and glusterfs from Debian glusterfs-server and glusterfs-client, iproute2, nsenter and /dev/fuse)"

const (
	serverAddr = "10.213.255.1"
	prefix     = "qg"
	// readyTimeout bounds glusterd's start, the volume's start and each mount (a loaded CI
	// machine takes tens of seconds for the first two).
	readyTimeout = 2 * time.Minute
	pollEvery    = 100 * time.Millisecond
)

// Options configures a bed.
type Options struct {
	// Clients is the number of client mounts (one per node), 1 to 200.
	Clients int
	// PingTimeout is the volume's network.ping-timeout: how long a client's operations hang on a
	// silent server before they fail with ENOTCONN. Zero keeps GlusterFS's default, 42 s.
	PingTimeout time.Duration
	// Logf, when set, receives one line per step.
	Logf func(format string, args ...any)
}

// LockSafeVolumeOptions are the volume settings docs/deploy.md asks for on a volume that holds
// lock files, and that every bed uses: these client-side caches answer a stat, an open or a
// small read from what the client saw before another client replaced the file, and a waiter
// that judges a lock expired on such an answer breaks a lock taken an instant earlier
// (TestConcurrentBreakersAcrossGlusterMounts let two holders in at once without them).
var LockSafeVolumeOptions = [][2]string{
	{"performance.stat-prefetch", "off"},
	{"performance.open-behind", "off"},
	{"performance.quick-read", "off"},
}

// Bed is a running volume with its client mounts.
type Bed struct {
	// Dir holds everything: brick, glusterd state and logs, mount points.
	Dir string
	// Volume is the volume's name.
	Volume string
	// Mounts[i] is client i's mount point.
	Mounts []string

	opts     Options
	id       string
	glusterd *exec.Cmd
	closed   bool
}

// Available says why the bed cannot run here, or nil.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("not root")
	}
	for _, p := range []string{"glusterd", "gluster", "glusterfs", "ip", "nsenter", "umount", "tc"} {
		if _, err := lookPath(p); err != nil {
			return fmt.Errorf("%s not found", p)
		}
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("no /dev/fuse: %w", err)
	}
	return nil
}

// lookPath finds a program on PATH or in the sbin directories (not always on a test's PATH).
func lookPath(p string) (string, error) {
	if f, err := exec.LookPath(p); err == nil {
		return f, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		f := filepath.Join(d, p)
		if fi, err := os.Stat(f); err == nil && fi.Mode()&0o111 != 0 {
			return f, nil
		}
	}
	return "", fmt.Errorf("%s: not found", p)
}

// New starts a bed for a test, skipping it with SkipMessage when the bed cannot run here; the
// bed is torn down at cleanup.
func New(t testing.TB, opts Options) *Bed {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("%s: %v", SkipMessage, err)
	}
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	dir, err := os.MkdirTemp("", "qslice-gluster-")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*readyTimeout)
	defer cancel()
	b, err := Start(ctx, dir, opts)
	if err != nil {
		t.Fatalf("start GlusterFS bed: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("tear down GlusterFS bed: %v", err)
		}
	})
	return b
}

// Start builds the namespaces, starts glusterd and the volume in dir (which must exist and
// should be empty) and mounts it once per client. On error everything started is torn down.
func Start(ctx context.Context, dir string, opts Options) (b *Bed, err error) {
	if opts.Clients < 1 || opts.Clients > 200 {
		return nil, fmt.Errorf("clients: %d: must be 1 to 200", opts.Clients)
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	CleanStale(opts.Logf)
	id := prefix + strconv.Itoa(os.Getpid())
	if out, _ := run(ctx, "ip", "netns", "list"); strings.Contains(out, id+"s") {
		return nil, fmt.Errorf("a bed of this process (%s) is already running: one bed per process", id)
	}
	b = &Bed{Dir: dir, Volume: id, opts: opts, id: id}
	defer func() {
		if err != nil {
			if cerr := b.Close(); cerr != nil {
				err = fmt.Errorf("%w (teardown: %v)", err, cerr)
			}
		}
	}()
	for _, d := range []string{"lib", "log", "brick", "run"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return b, err
		}
	}
	if err := b.network(ctx); err != nil {
		return b, err
	}
	if err := b.startServer(ctx); err != nil {
		return b, err
	}
	for i := 0; i < opts.Clients; i++ {
		if err := b.mount(ctx, i); err != nil {
			return b, err
		}
	}
	return b, nil
}

func (b *Bed) server() string       { return b.id + "s" }
func (b *Bed) client(i int) string  { return b.id + "c" + strconv.Itoa(i) }
func (b *Bed) srvLink(i int) string { return b.id + "s" + strconv.Itoa(i) }

// network creates the server namespace and one client namespace per client, each joined to the
// server by a veth pair.
func (b *Bed) network(ctx context.Context) error {
	s := b.server()
	steps := [][]string{
		{"ip", "netns", "add", s},
		{"ip", "-n", s, "link", "set", "lo", "up"},
		{"ip", "-n", s, "addr", "add", serverAddr + "/32", "dev", "lo"},
	}
	for i := 0; i < b.opts.Clients; i++ {
		c, cl, sl := b.client(i), b.client(i), b.srvLink(i)
		steps = append(steps,
			[]string{"ip", "netns", "add", c},
			[]string{"ip", "-n", c, "link", "set", "lo", "up"},
			[]string{"ip", "-n", c, "link", "add", cl, "type", "veth", "peer", "name", sl, "netns", s},
			[]string{"ip", "-n", c, "addr", "add", fmt.Sprintf("10.213.%d.2/24", i), "dev", cl},
			[]string{"ip", "-n", s, "addr", "add", fmt.Sprintf("10.213.%d.1/24", i), "dev", sl},
			[]string{"ip", "-n", c, "link", "set", cl, "up"},
			[]string{"ip", "-n", s, "link", "set", sl, "up"},
			[]string{"ip", "-n", c, "route", "add", serverAddr + "/32", "via", fmt.Sprintf("10.213.%d.1", i)},
		)
	}
	for _, st := range steps {
		if _, err := run(ctx, st[0], st[1:]...); err != nil {
			return err
		}
	}
	return nil
}

func (b *Bed) startServer(ctx context.Context) error {
	vol := filepath.Join(b.Dir, "glusterd.vol")
	if err := os.WriteFile(vol, []byte(`volume management
    type mgmt/glusterd
    option working-directory /var/lib/glusterd
    option transport-type socket
    option transport.socket.listen-port 24007
    option ping-timeout 0
    option event-threads 1
end-volume
`), 0o644); err != nil {
		return err
	}
	glusterd, err := lookPath("glusterd")
	if err != nil {
		return err
	}
	// `ip netns exec` gives the command a mount namespace of its own: the binds and the tmpfs
	// below are visible to glusterd and its brick only.
	script := fmt.Sprintf(`set -e
mount -t tmpfs qslice-gluster-run /run
mkdir -p /run/gluster
mount --bind %[1]s/lib /var/lib/glusterd
mount --bind %[1]s/log /var/log/glusterfs
exec %[2]s -N -f %[3]s -p %[1]s/glusterd.pid -l %[1]s/log/glusterd.log`, b.Dir, glusterd, vol)
	ip, err := lookPath("ip")
	if err != nil {
		return err
	}
	cmd := exec.Command(ip, "netns", "exec", b.server(), "sh", "-c", script)
	out, err := os.Create(filepath.Join(b.Dir, "glusterd.out"))
	if err != nil {
		return err
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start glusterd: %w", err)
	}
	b.glusterd = cmd
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	if err := b.poll(ctx, "glusterd answering", func() error {
		select {
		case <-exited:
			msg, _ := os.ReadFile(filepath.Join(b.Dir, "glusterd.out"))
			return backoffStop{fmt.Errorf("glusterd exited: %s", bytes.TrimSpace(msg))}
		default:
		}
		// Each try bounded: a CLI that connected before glusterd was ready can wait long.
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		_, err := b.gluster(cctx, "volume", "list")
		return err
	}); err != nil {
		return err
	}
	brick := serverAddr + ":" + filepath.Join(b.Dir, "brick", "v")
	if _, err := b.gluster(ctx, "volume", "create", b.Volume, brick, "force"); err != nil {
		return err
	}
	if b.opts.PingTimeout > 0 {
		secs := strconv.Itoa(int((b.opts.PingTimeout + time.Second - 1) / time.Second))
		if _, err := b.gluster(ctx, "volume", "set", b.Volume, "network.ping-timeout", secs); err != nil {
			return err
		}
	}
	for _, kv := range LockSafeVolumeOptions {
		if _, err := b.gluster(ctx, "volume", "set", b.Volume, kv[0], kv[1]); err != nil {
			return err
		}
	}
	if _, err := b.gluster(ctx, "volume", "start", b.Volume); err != nil {
		return err
	}
	b.opts.Logf("glusterfs: volume %s started in netns %s (brick %s)", b.Volume, b.server(), brick)
	return nil
}

type backoffStop struct{ error }

// gluster runs the gluster CLI in glusterd's namespaces.
func (b *Bed) gluster(ctx context.Context, args ...string) (string, error) {
	if b.glusterd == nil || b.glusterd.Process == nil {
		return "", errors.New("glusterd not running")
	}
	a := append([]string{"-t", strconv.Itoa(b.glusterd.Process.Pid), "-m", "-n", "gluster", "--mode=script"}, args...)
	return run(ctx, "nsenter", a...)
}

func (b *Bed) mount(ctx context.Context, i int) error {
	m := filepath.Join(b.Dir, "mnt"+strconv.Itoa(i))
	if err := os.MkdirAll(m, 0o755); err != nil {
		return err
	}
	gfs, err := lookPath("glusterfs")
	if err != nil {
		return err
	}
	// Only the network namespace changes: the mount stays in ours, visible to the nodes.
	if _, err := run(ctx, "nsenter", "--net=/run/netns/"+b.client(i), gfs,
		"--volfile-server="+serverAddr, "--volfile-id="+b.Volume,
		"--log-file="+filepath.Join(b.Dir, "log", fmt.Sprintf("client%d.log", i)),
		"--pid-file="+filepath.Join(b.Dir, fmt.Sprintf("client%d.pid", i)), m); err != nil {
		return err
	}
	b.Mounts = append(b.Mounts, m)
	if err := b.poll(ctx, "mount "+m, func() error {
		if !mounted(m) {
			return errors.New("not mounted yet")
		}
		_, err := os.ReadDir(m)
		return err
	}); err != nil {
		return err
	}
	b.opts.Logf("glusterfs: client %d mounted at %s (netns %s)", i, m, b.client(i))
	return nil
}

// Cut drops every packet between client i and the server, silently: client i's filesystem
// operations hang (up to the ping-timeout, then fail with ENOTCONN) until Heal.
func (b *Bed) Cut(i int) error {
	_, err := run(context.Background(), "ip", "-n", b.server(), "link", "set", b.srvLink(i), "down")
	if err == nil {
		b.opts.Logf("glusterfs: client %d cut off", i)
	}
	return err
}

// Slow limits the server's traffic to client i to rate (tc syntax, e.g. "20kbit").
func (b *Bed) Slow(i int, rate string) error {
	_, err := run(context.Background(), "tc", "-n", b.server(), "qdisc", "replace", "dev", b.srvLink(i), "root",
		"tbf", "rate", rate, "burst", "4kb", "latency", "10s")
	if err == nil {
		b.opts.Logf("glusterfs: client %d slowed to %s", i, rate)
	}
	return err
}

// Heal undoes Cut and Slow for client i.
func (b *Bed) Heal(i int) error {
	_, _ = run(context.Background(), "tc", "-n", b.server(), "qdisc", "del", "dev", b.srvLink(i), "root")
	_, err := run(context.Background(), "ip", "-n", b.server(), "link", "set", b.srvLink(i), "up")
	if err == nil {
		b.opts.Logf("glusterfs: client %d healed", i)
	}
	return err
}

// WaitAnswering polls client i's mount until a stat of its root answers (each try bounded, so
// a hung mount never blocks the caller past timeout; a try that hangs is abandoned).
func (b *Bed) WaitAnswering(i int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		done := make(chan error, 1)
		go func() {
			f := filepath.Join(b.Mounts[i], ".qslice-bed-probe")
			err := os.WriteFile(f, []byte("x"), 0o644)
			if err == nil {
				err = os.Remove(f)
			}
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil {
				return nil
			}
		case <-time.After(time.Until(deadline)):
		}
		time.Sleep(pollEvery)
	}
	return fmt.Errorf("mount %s did not answer within %s", b.Mounts[i], timeout)
}

// Close tears everything down; it is idempotent and always runs every step.
func (b *Bed) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	err := teardown(b.id, b.Dir, b.opts.Logf)
	if b.glusterd != nil && b.glusterd.Process != nil {
		_ = syscall.Kill(-b.glusterd.Process.Pid, syscall.SIGKILL)
	}
	return err
}

// CleanStale tears down beds left by processes that no longer exist.
func CleanStale(logf func(string, ...any)) {
	out, _ := run(context.Background(), "ip", "netns", "list")
	seen := map[string]bool{}
	for _, line := range strings.Split(out, "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if !strings.HasPrefix(name, prefix) || !strings.HasSuffix(name, "s") {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(name, prefix), "s"))
		if err != nil || seen[name] {
			continue
		}
		seen[name] = true
		if syscall.Kill(pid, 0) == nil {
			continue // its owner runs
		}
		id := prefix + strconv.Itoa(pid)
		logf("glusterfs: tearing down the stale bed %s (its process is gone)", id)
		_ = teardown(id, "", logf)
	}
}

// teardown removes the bed id: mounts (found in /proc/mounts by volume name), client and server
// processes, namespaces, and dir when nothing is mounted in it any more.
func teardown(id, dir string, logf func(string, ...any)) error {
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// 1. Lazy unmounts: the mount points detach at once even while requests hang.
	for _, m := range glusterMounts(id) {
		if _, err := run(ctx, "umount", "-l", m); err != nil {
			errs = append(errs, err)
		}
	}
	// 2. Kill every process in our namespaces: the FUSE clients (their death aborts every request
	// still waiting on their connection, so nobody stays in D state), glusterd, the brick.
	nsList, _ := run(ctx, "ip", "netns", "list")
	var names []string
	for _, line := range strings.Split(nsList, "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if rest, ok := strings.CutPrefix(name, id); ok && (strings.HasPrefix(rest, "s") || strings.HasPrefix(rest, "c")) {
			names = append(names, name)
		}
	}
	var pids []int
	for _, n := range names {
		out, _ := run(ctx, "ip", "netns", "pids", n)
		for _, f := range strings.Fields(out) {
			if p, err := strconv.Atoi(f); err == nil && p > 1 && p != os.Getpid() {
				pids = append(pids, p)
			}
		}
	}
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(pollEvery) {
		alive := 0
		for _, p := range pids {
			if syscall.Kill(p, 0) == nil && !zombie(p) {
				alive++
			}
		}
		if alive == 0 {
			break
		}
	}
	// 3. Namespaces (deleting the server's removes the veth pairs).
	for _, n := range names {
		if _, err := run(ctx, "ip", "netns", "del", n); err != nil {
			errs = append(errs, err)
		}
	}
	// 4. The directory, only when nothing is mounted under it (a remove through a live mount
	// would delete the volume's files, and a hung one would block).
	if dir != "" {
		if busy := mountsUnder(dir); len(busy) > 0 {
			errs = append(errs, fmt.Errorf("left %s in place: still mounted: %v", dir, busy))
		} else if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		logf("glusterfs: bed %s torn down", id)
	}
	return errors.Join(errs...)
}

func zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] == 'Z'
	}
	return false
}

// glusterMounts lists the mount points of volume id.
func glusterMounts(id string) []string {
	var out []string
	for _, f := range procMounts() {
		if len(f) >= 3 && f[0] == serverAddr+":"+id && strings.HasPrefix(f[2], "fuse.glusterfs") {
			out = append(out, f[1])
		}
	}
	return out
}

func mountsUnder(dir string) []string {
	var out []string
	for _, f := range procMounts() {
		if len(f) >= 2 && (f[1] == dir || strings.HasPrefix(f[1], dir+"/")) {
			out = append(out, f[1])
		}
	}
	return out
}

func mounted(m string) bool {
	for _, f := range procMounts() {
		if len(f) >= 2 && f[1] == m {
			return true
		}
	}
	return false
}

func procMounts() [][]string {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return nil
	}
	var out [][]string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 3 {
			out = append(out, f)
		}
	}
	return out
}

func (b *Bed) poll(ctx context.Context, what string, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var last error
	for {
		if last = f(); last == nil {
			return nil
		}
		var stop backoffStop
		if errors.As(last, &stop) {
			return stop.error
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: not ready within %s: %w", what, readyTimeout, last)
		case <-time.After(pollEvery):
		}
	}
}

// run runs a command with a bounded time and returns its output, or an error naming the
// command and quoting its output.
func run(ctx context.Context, name string, args ...string) (string, error) {
	p, err := lookPath(name)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, p, args...)
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}
