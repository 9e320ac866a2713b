package mailman

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Mailman 2.1's qrunners and the Defaults.py variable naming the queue each one scans. A
// qrunner not listed here (MaildirRunner, a site's own) has no qfiles queue qslice can map.
var mm2QueueVar = map[string]string{
	"ArchRunner":     "ARCHQUEUE_DIR",
	"BounceRunner":   "BOUNCEQUEUE_DIR",
	"CommandRunner":  "CMDQUEUE_DIR",
	"IncomingRunner": "INQUEUE_DIR",
	"NewsRunner":     "NEWSQUEUE_DIR",
	"OutgoingRunner": "OUTQUEUE_DIR",
	"VirginRunner":   "VIRGINQUEUE_DIR",
	"RetryRunner":    "RETRYQUEUE_DIR",
}

// The settings an import needs; a statement that changes one in a way this reader cannot follow
// is reported.
var mm2Needed = regexp.MustCompile(`^(QRUNNERS|prefix|exec_prefix|VAR_PREFIX|QUEUE_DIR|LOCK_DIR|BIN_DIR|[A-Z]+QUEUE_DIR)$`)

// LoadMailman2 reads Mailman 2.1's Defaults.py and then mm_cfg.py (either may be ""), following
// plain assignments of strings, numbers, os.path.join, + and QRUNNERS lists with .append and
// .remove. Anything else that touches a needed setting becomes a note naming its line.
func LoadMailman2(defaultsPy, mmCfgPy string) (*Site, error) {
	ev := &pyEval{vars: map[string]pyVal{}}
	site := &Site{Version: 2}
	for _, p := range []string{defaultsPy, mmCfgPy} {
		if p == "" {
			continue
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, err
		}
		data, err := os.ReadFile(abs)
		if err != nil {
			return nil, fmt.Errorf("read Mailman 2.1 configuration: %w", err)
		}
		site.ConfigFile = abs
		ev.run(abs, string(data))
	}
	site.Notes = append(site.Notes, ev.notes...)
	str := func(n string) string { v := ev.vars[n]; return v.s }
	site.VarDir, site.QueueDir, site.LockDir = str("VAR_PREFIX"), str("QUEUE_DIR"), str("LOCK_DIR")
	if b := str("BIN_DIR"); b != "" {
		site.BinDir = b
	} else if p := str("prefix"); p != "" {
		site.BinDir = filepath.Join(p, "bin")
	}
	qr, ok := ev.vars["QRUNNERS"]
	if !ok || qr.list == nil {
		return nil, fmt.Errorf("no QRUNNERS list found in %s %s (name Defaults.py with --defaults)", defaultsPy, mmCfgPy)
	}
	for _, t := range qr.list {
		r := Runner{Name: t.name, Class: t.name, Instances: t.n, Start: true, Source: t.src}
		if v, ok := mm2QueueVar[t.name]; ok {
			if r.QueueDir = str(v); r.QueueDir == "" {
				site.Notes = append(site.Notes, fmt.Sprintf("qrunner %s: %s is not set; its queue directory is unknown", t.name, v))
			}
		} else {
			site.Notes = append(site.Notes, fmt.Sprintf("qrunner %s (%s) scans no qfiles queue qslice knows; supervised as one process", t.name, t.src))
		}
		site.Runners = append(site.Runners, r)
	}
	for _, n := range []struct{ name, v string }{{"shunt", "SHUNTQUEUE_DIR"}, {"bad", "BADQUEUE_DIR"}} {
		if d := str(n.v); d != "" {
			site.Runners = append(site.Runners, Runner{Name: n.name, Class: "mailman.runners.fake." + n.name, QueueDir: d, Instances: 1})
		}
	}
	return site, nil
}

type pyRunner struct {
	name string
	n    int
	src  string
}

type pyVal struct {
	s    string
	list []pyRunner // non-nil for a QRUNNERS-style list
	ok   bool
}

type pyEval struct {
	vars  map[string]pyVal
	notes []string
}

var (
	assignRE = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$`)
	methodRE = regexp.MustCompile(`^QRUNNERS\.(append|remove)\((.*)\)$`)
	tupleRE  = regexp.MustCompile(`\(\s*(?:'([A-Za-z0-9_]+)'|"([A-Za-z0-9_]+)")\s*,\s*(\d+)\s*\)`)
)

// run evaluates the top-level statements of one file; a statement spans lines while brackets are
// open.
func (e *pyEval) run(file, src string) {
	lines := strings.Split(src, "\n")
	for i := 0; i < len(lines); i++ {
		start := i
		stmt := stripComment(lines[i])
		for depth(stmt) > 0 && i+1 < len(lines) {
			i++
			stmt += " " + stripComment(lines[i])
		}
		if stmt == "" {
			continue
		}
		where := fmt.Sprintf("%s:%d", file, start+1)
		if strings.HasPrefix(lines[start], " ") || strings.HasPrefix(lines[start], "\t") {
			// Inside a block (if, def, for): whether it runs is not known here.
			stmt = strings.TrimSpace(stmt)
			if m := assignRE.FindStringSubmatch(stmt); (m != nil && mm2Needed.MatchString(m[1])) || methodRE.MatchString(stmt) {
				e.notes = append(e.notes, fmt.Sprintf("%s: %q is inside a block; the import does not follow it", where, stmt))
			}
			continue
		}
		stmt = strings.TrimSpace(stmt)
		if m := methodRE.FindStringSubmatch(stmt); m != nil {
			ts := tupleRE.FindAllStringSubmatch(m[2], -1)
			if len(ts) != 1 {
				e.notes = append(e.notes, fmt.Sprintf("%s: %q not understood", where, stmt))
				continue
			}
			t := toRunner(ts[0], where)
			q := e.vars["QRUNNERS"]
			if m[1] == "append" {
				q.list = append(q.list, t)
			} else {
				for j, r := range q.list {
					if r.name == t.name && r.n == t.n {
						q.list = append(q.list[:j:j], q.list[j+1:]...)
						break
					}
				}
			}
			e.vars["QRUNNERS"] = q
			continue
		}
		m := assignRE.FindStringSubmatch(stmt)
		if m == nil {
			continue // import, def, if, print: nothing qslice reads
		}
		v := e.expr(strings.TrimSpace(m[2]), where)
		if !v.ok {
			if mm2Needed.MatchString(m[1]) {
				e.notes = append(e.notes, fmt.Sprintf("%s: %s = %s is not understood; the import keeps the earlier value", where, m[1], strings.TrimSpace(m[2])))
			}
			continue
		}
		e.vars[m[1]] = v
	}
}

func (e *pyEval) expr(x, where string) pyVal {
	if strings.HasPrefix(x, "[") && strings.HasSuffix(x, "]") {
		var l []pyRunner
		for _, t := range tupleRE.FindAllStringSubmatch(x, -1) {
			l = append(l, toRunner(t, where))
		}
		if l == nil {
			l = []pyRunner{}
		}
		return pyVal{list: l, ok: true}
	}
	parts := splitTop(x, '+')
	if len(parts) > 1 {
		var out pyVal
		for i, p := range parts {
			v := e.expr(strings.TrimSpace(p), where)
			if !v.ok {
				return pyVal{}
			}
			if i == 0 {
				out = v
			} else if out.list != nil && v.list != nil {
				out.list = append(append([]pyRunner{}, out.list...), v.list...)
			} else {
				out.s += v.s
			}
		}
		return out
	}
	if args, ok := strings.CutPrefix(x, "os.path.join("); ok && strings.HasSuffix(args, ")") {
		var elems []string
		for _, a := range splitTop(strings.TrimSuffix(args, ")"), ',') {
			v := e.expr(strings.TrimSpace(a), where)
			if !v.ok {
				return pyVal{}
			}
			elems = append(elems, v.s)
		}
		return pyVal{s: pyJoin(elems), ok: true}
	}
	if s, err := strconv.Unquote(pyQuote(x)); err == nil && len(x) >= 2 && (x[0] == '\'' || x[0] == '"') {
		return pyVal{s: s, ok: true}
	}
	if _, err := strconv.Atoi(x); err == nil {
		return pyVal{s: x, ok: true}
	}
	if v, ok := e.vars[x]; ok {
		return v
	}
	return pyVal{}
}

// pyJoin is os.path.join: an absolute part discards what came before.
func pyJoin(parts []string) string {
	out := ""
	for _, p := range parts {
		if strings.HasPrefix(p, "/") || out == "" {
			out = p
		} else if strings.HasSuffix(out, "/") {
			out += p
		} else {
			out += "/" + p
		}
	}
	return out
}

func pyQuote(x string) string {
	if len(x) >= 2 && x[0] == '\'' && x[len(x)-1] == '\'' {
		return `"` + strings.ReplaceAll(x[1:len(x)-1], `"`, `\"`) + `"`
	}
	return x
}

func toRunner(m []string, where string) pyRunner {
	name := m[1] + m[2]
	n, _ := strconv.Atoi(m[3])
	return pyRunner{name: name, n: n, src: where}
}

// stripComment removes a # comment outside quotes.
func stripComment(l string) string {
	var q byte
	for i := 0; i < len(l); i++ {
		switch c := l[i]; {
		case q != 0 && c == q:
			q = 0
		case q == 0 && (c == '\'' || c == '"'):
			q = c
		case q == 0 && c == '#':
			return strings.TrimRight(l[:i], " \t")
		}
	}
	return strings.TrimRight(l, " \t")
}

// depth is the bracket depth at the end of s, outside quotes.
func depth(s string) int {
	_, d := scanTop(s, 0)
	return d
}

// splitTop splits s at sep outside quotes and brackets.
func splitTop(s string, sep byte) []string {
	parts, _ := scanTop(s, sep)
	return parts
}

// scanTop walks s once, tracking quotes and bracket depth: it splits s at sep where both are at
// the top (sep 0: no split) and returns the parts and the depth at the end.
func scanTop(s string, sep byte) (parts []string, depth int) {
	last := 0
	var q byte
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case q != 0 && c == q:
			q = 0
		case q == 0 && (c == '\'' || c == '"'):
			q = c
		case q == 0 && (c == '(' || c == '['):
			depth++
		case q == 0 && (c == ')' || c == ']'):
			depth--
		case q == 0 && depth == 0 && sep != 0 && c == sep:
			parts = append(parts, s[last:i])
			last = i + 1
		}
	}
	return append(parts, s[last:]), depth
}
