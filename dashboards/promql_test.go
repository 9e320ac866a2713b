package dashboards

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// promqlKeywords are identifiers of PromQL that are not metric names. Function and aggregation
// names need no list: they are the identifiers followed by "(".
var promqlKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "atan2": true, "bool": true, "offset": true,
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"inf": true, "nan": true,
}

// promqlGroupers take a parenthesised list of label names.
var promqlGroupers = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// metricNames returns the metric names a PromQL expression selects, in order of first use. It is
// a tokenizer, not a parser: it skips strings, comments, label matchers ({...}), ranges and
// subqueries ([...]), numbers and durations, Grafana variables ($x, ${x}), the label lists of
// by/without/on/ignoring/group_left/group_right, keywords, and function names (an identifier
// followed by "("). Every other identifier is a metric name. It fails on an unterminated string,
// an unclosed bracket or unbalanced parentheses, which a real parser would reject too.
func metricNames(expr string) ([]string, error) {
	var out []string
	s := expr
	depth := 0
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '#':
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			end, err := skipString(s, i)
			if err != nil {
				return nil, err
			}
			i = end
		case c == '{' || c == '[':
			end, err := skipGroup(s, i)
			if err != nil {
				return nil, err
			}
			i = end
		case c == '}' || c == ']':
			return nil, fmt.Errorf("unbalanced %q at %d in %q", c, i, expr)
		case c == '(':
			depth++
			i++
		case c == ')':
			depth--
			if depth < 0 {
				return nil, fmt.Errorf("unbalanced ')' at %d in %q", i, expr)
			}
			i++
		case c == '$':
			i++
			if i < len(s) && s[i] == '{' {
				end, err := skipGroup(s, i)
				if err != nil {
					return nil, err
				}
				i = end
			} else {
				for i < len(s) && isIdentChar(s[i]) {
					i++
				}
			}
		case isDigit(c) || (c == '.' && i+1 < len(s) && isDigit(s[i+1])):
			for i < len(s) && (isIdentChar(s[i]) || s[i] == '.' ||
				((s[i] == '+' || s[i] == '-') && (s[i-1] == 'e' || s[i-1] == 'E') && !strings.HasPrefix(strings.ToLower(s[:i]), "0x"))) {
				i++
			}
		case isIdentStart(c):
			start := i
			for i < len(s) && isIdentChar(s[i]) {
				i++
			}
			ident := s[start:i]
			j := i
			for j < len(s) && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r') {
				j++
			}
			low := strings.ToLower(ident)
			switch {
			case promqlGroupers[low]:
				if j < len(s) && s[j] == '(' {
					end, err := skipGroup(s, j)
					if err != nil {
						return nil, err
					}
					i = end
				}
			case promqlKeywords[low]:
			case j < len(s) && s[j] == '(': // a function or an aggregation
			case aggregationModifier(s[j:]): // sum by (...) (...)
			default:
				if !slices.Contains(out, ident) {
					out = append(out, ident)
				}
			}
		default:
			i++
		}
	}
	if depth != 0 {
		return nil, fmt.Errorf("unbalanced parentheses in %q", expr)
	}
	return out, nil
}

// aggregationModifier tells whether s starts with the keyword by or without, which only ever
// follows an aggregation's name.
func aggregationModifier(s string) bool {
	k := 0
	for k < len(s) && isIdentChar(s[k]) {
		k++
	}
	w := strings.ToLower(s[:k])
	return w == "by" || w == "without"
}

func isDigit(c byte) bool      { return c >= '0' && c <= '9' }
func isIdentStart(c byte) bool { return c == '_' || c == ':' || (c|0x20 >= 'a' && c|0x20 <= 'z') }
func isIdentChar(c byte) bool  { return isIdentStart(c) || isDigit(c) }

// skipString returns the index after the string literal starting at s[i].
func skipString(s string, i int) (int, error) {
	q := s[i]
	for j := i + 1; j < len(s); j++ {
		switch {
		case s[j] == '\\' && q != '`':
			j++
		case s[j] == q:
			return j + 1, nil
		}
	}
	return 0, fmt.Errorf("unterminated string at %d in %q", i, s)
}

// skipGroup returns the index after the bracket group ({...}, [...] or (...)) starting at s[i],
// strings inside included.
func skipGroup(s string, i int) (int, error) {
	closer := map[byte]byte{'{': '}', '[': ']', '(': ')'}
	var stack []byte
	for j := i; j < len(s); j++ {
		switch c := s[j]; c {
		case '"', '\'', '`':
			end, err := skipString(s, j)
			if err != nil {
				return 0, err
			}
			j = end - 1
		case '{', '[', '(':
			stack = append(stack, closer[c])
		case '}', ']', ')':
			if len(stack) == 0 || stack[len(stack)-1] != c {
				return 0, fmt.Errorf("unbalanced %q at %d in %q", c, j, s)
			}
			stack = stack[:len(stack)-1]
			if len(stack) == 0 {
				return j + 1, nil
			}
		}
	}
	return 0, fmt.Errorf("unclosed %q at %d in %q", s[i], i, s)
}

// labelValuesRE matches Grafana's label_values(selector, label) variable query.
var labelValuesRE = regexp.MustCompile(`^\s*label_values\(\s*(.*?)\s*,\s*[a-zA-Z_]\w*\s*\)\s*$`)

// variableQueryExpr returns the PromQL inside a Grafana Prometheus variable query.
func variableQueryExpr(query string) (string, error) {
	if m := labelValuesRE.FindStringSubmatch(query); m != nil {
		return m[1], nil
	}
	if m := regexp.MustCompile(`^\s*query_result\((.*)\)\s*$`).FindStringSubmatch(query); m != nil {
		return m[1], nil
	}
	return "", fmt.Errorf("variable query %q: not label_values(selector, label) or query_result(expr)", query)
}

func TestMetricNames(t *testing.T) {
	tests := []struct {
		expr    string
		want    []string
		wantErr bool
	}{
		{expr: `qslice_queue_ready_messages`, want: []string{"qslice_queue_ready_messages"}},
		{expr: `sum by (job, queue, slice) (qslice_slice_owned{job=~"$job", queue=~"a|b"}) == 0`, want: []string{"qslice_slice_owned"}},
		{expr: `sum(x) without (le) / on (queue) group_left (node) y`, want: []string{"x", "y"}},
		{expr: `a * on (q) group_left b`, want: []string{"a", "b"}},
		{expr: `histogram_quantile(0.99, sum by (queue, le) (rate(qslice_message_lock_wait_seconds_bucket{queue=~"$queue"}[$__rate_interval]))) > 1e1`,
			want: []string{"qslice_message_lock_wait_seconds_bucket"}},
		{expr: `rate(a[5m] offset 1h) > bool 0.5 and b @ start()`, want: []string{"a", "b"}},
		{expr: `max_over_time(deriv(job_queue:rec:max[10m])[30m:1m])`, want: []string{"job_queue:rec:max"}},
		{expr: `label_replace(up{job="x"}, "dst", "$1", "instance", "(.*):.*") or vector(0)`, want: []string{"up"}},
		{expr: `absent(up{job="qslice"} == 1) # no target\n unless ALERTS{alertname="x"}`, want: []string{"up", "ALERTS"}},
		{expr: "time() - x_timestamp_seconds\n# comment with metric_name in it\n> 600", want: []string{"x_timestamp_seconds"}},
		{expr: `count_values("version", qslice_build_info) > -Inf`, want: []string{"qslice_build_info"}},
		{expr: `a{l="}"} + b{l='{'} - c{l=` + "`]`" + `}`, want: []string{"a", "b", "c"}},
		{expr: `0x1F + 1.5e-3 + .5 + NaN + a`, want: []string{"a"}},
		{expr: `sum(a{l="x"}`, wantErr: true},
		{expr: `a{l="x"`, wantErr: true},
		{expr: `a{l="x}`, wantErr: true},
		{expr: `rate(a[5m)`, wantErr: true},
		{expr: `a)`, wantErr: true},
	}
	for _, tt := range tests {
		got, err := metricNames(strings.ReplaceAll(tt.expr, `\n`, "\n"))
		if (err != nil) != tt.wantErr {
			t.Errorf("metricNames(%q) error %v, want error: %v", tt.expr, err, tt.wantErr)
			continue
		}
		if !tt.wantErr && !slices.Equal(got, tt.want) {
			t.Errorf("metricNames(%q) = %q, want %q", tt.expr, got, tt.want)
		}
	}
}

func TestVariableQueryExpr(t *testing.T) {
	for q, want := range map[string]string{
		`label_values(qslice_build_info, job)`:                     `qslice_build_info`,
		`label_values(qslice_build_info{job=~"$job"}, instance)`:   `qslice_build_info{job=~"$job"}`,
		`query_result(max by (queue) (qslice_queue_owned_slices))`: `max by (queue) (qslice_queue_owned_slices)`,
	} {
		got, err := variableQueryExpr(q)
		if err != nil || got != want {
			t.Errorf("variableQueryExpr(%q) = %q, %v; want %q", q, got, err, want)
		}
	}
	if _, err := variableQueryExpr(`label_values(job)`); err == nil {
		t.Errorf("label_values(job) accepted: it queries no metric, so nothing could be checked")
	}
}
