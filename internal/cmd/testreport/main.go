// Command testreport reads `go test -json` on stdin and prints what a person needs from a CI run:
// a line per package as `go test` prints it, the whole output of every failed test, and at the end
// every skipped test with its reason. It fails (exit 1) when a test failed, when a package failed
// to build, or when a test skipped that the allow-list does not name: CI installs every part the
// tests use, so a skip for a missing part is a broken set-up, not a pass.
//
// The allow-list has one entry per line: a regular expression matched against "pkg.TestName"
// (pkg relative to the module, e.g. "chaos.TestChaos"), then " # " and why that skip is expected.
//
//	go test -json ./... | go run ./internal/cmd/testreport -allow .ci/allowed-skips.txt
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64
}

// allowed is one allow-list entry.
type allowed struct {
	re     *regexp.Regexp
	reason string
	line   int
	used   bool
}

func main() {
	allowFile := flag.String("allow", "", "file of skips that are expected (regexp # reason per line)")
	allowAny := flag.Bool("allow-any", false, "report skips outside the allow-list but do not fail on them (a machine without every part)")
	module := flag.String("module", "github.com/qslice/qslice/", "module prefix stripped from package names")
	flag.Parse()
	allow, err := readAllow(*allowFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testreport:", err)
		os.Exit(2)
	}
	r := report{module: *module, allow: allow, allowAny: *allowAny, out: os.Stdout, output: map[string][]string{}}
	if err := r.read(os.Stdin); err != nil {
		fmt.Fprintln(os.Stderr, "testreport:", err)
		os.Exit(2)
	}
	if !r.summary() {
		os.Exit(1)
	}
}

func readAllow(path string) ([]*allowed, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var list []*allowed
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		pat, reason, ok := strings.Cut(line, " # ")
		if !ok || strings.TrimSpace(reason) == "" {
			return nil, fmt.Errorf("%s:%d: want `regexp # why this skip is expected`", path, i+1)
		}
		re, err := regexp.Compile("^(?:" + strings.TrimSpace(pat) + ")$")
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, i+1, err)
		}
		list = append(list, &allowed{re: re, reason: strings.TrimSpace(reason), line: i + 1})
	}
	return list, nil
}

type skip struct {
	name, reason string
	allowedBy    *allowed
}

type report struct {
	module   string
	allow    []*allowed
	allowAny bool
	out      io.Writer

	output   map[string][]string // test key -> output lines so far
	failed   []string            // failed tests and packages
	skips    []skip
	packages int
}

func key(e event) string { return e.Package + "\x00" + e.Test }

func (r *report) name(e event) string {
	return strings.TrimPrefix(e.Package, r.module) + "." + e.Test
}

func (r *report) read(in io.Reader) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
			// Not test2json: a build error or the go command's own output. Show it as it is.
			fmt.Fprintln(r.out, string(line))
			continue
		}
		k := key(e)
		switch e.Action {
		case "output":
			r.output[k] = append(r.output[k], e.Output)
		case "pass":
			if e.Test == "" {
				r.packages++
				fmt.Fprintf(r.out, "ok  \t%s\t%.3fs\n", e.Package, e.Elapsed)
			}
			delete(r.output, k)
		case "skip":
			if e.Test == "" {
				fmt.Fprintf(r.out, "?   \t%s\t[no test files]\n", e.Package)
			} else {
				r.skips = append(r.skips, skip{name: r.name(e), reason: skipReason(r.output[k])})
			}
			delete(r.output, k)
		case "fail":
			if e.Test == "" {
				r.packages++
				fmt.Fprintf(r.out, "FAIL\t%s\t%.3fs\n", e.Package, e.Elapsed)
				if len(r.output[k]) > 0 {
					// Package-level output of a failed package: a panic, a timeout, a build error.
					fmt.Fprint(r.out, strings.Join(r.output[k], ""))
				}
				r.failed = append(r.failed, e.Package)
			} else {
				fmt.Fprintf(r.out, "--- FAIL: %s\n%s", r.name(e), strings.Join(r.output[k], ""))
				r.failed = append(r.failed, r.name(e))
			}
			delete(r.output, k)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if r.packages == 0 {
		return errors.New("no package results on stdin: did `go test -json` run?")
	}
	return nil
}

// skipReason is what the test said before "--- SKIP": the t.Skip message.
func skipReason(lines []string) string {
	var said []string
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- SKIP") {
			continue
		}
		said = append(said, t)
	}
	return strings.Join(said, " ")
}

// summary prints the skips and the verdict; it reports whether the run passed.
func (r *report) summary() bool {
	ok := len(r.failed) == 0
	sort.Slice(r.skips, func(i, j int) bool { return r.skips[i].name < r.skips[j].name })
	var unexpected []skip
	for i := range r.skips {
		s := &r.skips[i]
		for _, a := range r.allow {
			if a.re.MatchString(s.name) {
				s.allowedBy, a.used = a, true
				break
			}
		}
		if s.allowedBy == nil {
			unexpected = append(unexpected, *s)
		}
	}
	fmt.Fprintf(r.out, "\n%d packages, %d failed tests or packages, %d skipped tests (%d not in the allow-list)\n",
		r.packages, len(r.failed), len(r.skips), len(unexpected))
	for _, s := range r.skips {
		mark := "NOT ALLOWED"
		if a := s.allowedBy; a != nil {
			mark = fmt.Sprintf("allowed by line %d: %s", a.line, a.reason)
		}
		fmt.Fprintf(r.out, "SKIP %s: %s [%s]\n", s.name, s.reason, mark)
	}
	if len(unexpected) > 0 && r.allowAny {
		fmt.Fprintf(r.out, "\n%d tests skipped that CI runs (-allow-any: not failing)\n", len(unexpected))
	} else if len(unexpected) > 0 {
		ok = false
		fmt.Fprintf(r.out, "\nFAIL: %d tests skipped that CI must run; install what they name (.ci/apt-packages.txt, scripts/build-consul.sh), or add them to the allow-list with a reason\n", len(unexpected))
	}
	for _, f := range r.failed {
		fmt.Fprintf(r.out, "FAILED: %s\n", f)
	}
	return ok
}
