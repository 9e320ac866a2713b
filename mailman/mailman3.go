package mailman

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

//go:embed defaults.cfg
var defaultsCfg []byte

// Runner is one runner of a Mailman installation, as Mailman's master would start it.
type Runner struct {
	Name      string // the runner name: the queue name and the first part of --runner=NAME:SLICE:COUNT
	Class     string // Python class (Mailman 3) or qrunner class name (Mailman 2.1)
	QueueDir  string // the queue directory it scans; "" for a runner without one (rest, lmtp, task)
	Instances int    // the slice count; Mailman starts this many processes
	Start     bool   // whether Mailman's master starts it (start: yes)
	SleepTime string // how often it scans its queue (informational)
	Source    string // file:line that last set instances or the section, for messages
}

// Placeholder reports whether the runner is only a name for a queue that nothing processes (the
// shunt and bad queues of Mailman 3): there is no process to supervise.
func (r Runner) Placeholder() bool { return strings.HasPrefix(r.Class, "mailman.runners.fake.") }

// Site is what qslice takes from one Mailman installation's configuration.
type Site struct {
	Version    int    // 3 or 2 (Mailman 2.1)
	ConfigFile string // absolute path of the configuration file read (mailman.cfg or mm_cfg.py)
	Layout     string // Mailman 3: the [paths.*] layout in use
	VarDir     string
	QueueDir   string
	LockDir    string
	BinDir     string // "" when unknown (layout bin_dir: $argv)
	Runners    []Runner
	// Notes tell what could not be mapped or needs the administrator's attention; each names the
	// file and line it comes from when there is one.
	Notes []string
}

// Runner returns the runner named name.
func (s *Site) Runner(name string) (Runner, bool) {
	for _, r := range s.Runners {
		if r.Name == name {
			return r, true
		}
	}
	return Runner{}, false
}

// mailman3 dir names whose $<NAME>_DIR substitutions a runner's path may use (config.py's
// DIR_NAMES), plus var_dir and template_dir.
var dirNames = []string{"archive", "bin", "cache", "data", "etc", "list_data", "lock", "log", "messages", "queue"}

// LoadMailman3 reads a Mailman 3 mailman.cfg (and any file it extends with [meta] extends:) over
// Mailman's defaults. cwd stands for Mailman's working directory in the layouts that use $cwd.
func LoadMailman3(path string) (*Site, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	def, err := parseINI("mailman defaults", defaultsCfg)
	if err != nil {
		return nil, err
	}
	site := &Site{Version: 3, ConfigFile: abs}
	layers := []*iniFile{def}
	var chain []*iniFile
	for p, depth := path, 0; p != ""; depth++ { // files named as given, in messages
		if depth == 8 {
			return nil, fmt.Errorf("%s: [meta] extends: more than 8 files deep", path)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read Mailman configuration: %w", err)
		}
		f, err := parseINI(p, data)
		if err != nil {
			return nil, err
		}
		chain = append([]*iniFile{f}, chain...)
		p = ""
		for _, s := range f.sections {
			if s.name == "meta" {
				if v, ok := s.vals["extends"]; ok {
					p = filepath.Join(filepath.Dir(f.name), v.val)
				}
			}
		}
	}
	layers = append(layers, chain...)

	// Merge: the sections of every layer in order, later keys winning. A site's ".master"
	// sections are schema directives, which Mailman ignores outside schema.cfg.
	merged := map[string]map[string]iniValue{}
	var order []string
	for li, f := range layers {
		for _, s := range f.sections {
			if li > 0 && strings.HasSuffix(s.name, ".master") {
				site.Notes = append(site.Notes, fmt.Sprintf("%s:%d: [%s] is ignored: Mailman reads .master sections only from its schema", f.name, s.line, s.name))
				continue
			}
			m, ok := merged[s.name]
			if !ok {
				m = map[string]iniValue{}
				merged[s.name] = m
				order = append(order, s.name)
			}
			for _, k := range s.keys {
				m[k] = s.vals[k]
			}
		}
	}
	get := func(section, key string) (iniValue, bool) {
		if m, ok := merged[section]; ok {
			if v, ok := m[key]; ok {
				return v, true
			}
		}
		if cat, _, ok := strings.Cut(section, "."); ok {
			if v, ok := merged[cat+".master"][key]; ok {
				return v, true
			}
		}
		return iniValue{}, false
	}

	// Paths, as config.py's _expand_paths.
	layout, _ := get("mailman", "layout")
	site.Layout = strings.TrimSpace(layout.val)
	if _, ok := merged["paths."+site.Layout]; !ok {
		return nil, fmt.Errorf("%s: [mailman] layout: %s, but there is no [paths.%s] section (Mailman stops with \"No path configuration found\")", path, site.Layout, site.Layout)
	}
	pv := func(key string) string {
		v, _ := get("paths."+site.Layout, key)
		return strings.TrimSpace(v.val)
	}
	cwd, _ := os.Getwd()
	subs := map[string]string{"cwd": cwd, "var_dir": pv("var_dir"), "template_dir": pv("template_dir"), "cfg_file": abs,
		"lock_file": pv("lock_file"), "pid_file": pv("pid_file")}
	for _, n := range dirNames {
		subs[n+"_dir"] = pv(n + "_dir")
	}
	if os.Getenv("MAILMAN_VAR_DIR") != "" {
		site.Notes = append(site.Notes, "MAILMAN_VAR_DIR is set in this environment; Mailman would use it instead of var_dir, this import used the file's var_dir")
	}
	if strings.Contains(subs["var_dir"], "$cwd") {
		site.Notes = append(site.Notes, fmt.Sprintf("layout %s puts var_dir under Mailman's working directory ($cwd); this import used %s: give the runners that working directory (supervise.dir) or use a layout with an absolute var_dir", site.Layout, cwd))
	}
	for last := -1; ; {
		var pending []string
		for k, v := range subs {
			nv := substitute(v, subs)
			subs[k] = nv
			if strings.Contains(nv, "$") && k != "bin_dir" {
				pending = append(pending, k+": "+nv)
			}
		}
		if len(pending) == 0 {
			break
		}
		if len(pending) == last {
			slices.Sort(pending)
			return nil, fmt.Errorf("%s: [paths.%s]: the path variables do not resolve: %s", path, site.Layout, strings.Join(pending, ", "))
		}
		last = len(pending)
	}
	absPath := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return filepath.Clean(p)
		}
		return filepath.Join(cwd, p)
	}
	site.VarDir, site.QueueDir, site.LockDir = absPath(subs["var_dir"]), absPath(subs["queue_dir"]), absPath(subs["lock_dir"])
	if b := subs["bin_dir"]; !strings.Contains(b, "$") {
		site.BinDir = absPath(b)
	} else {
		site.Notes = append(site.Notes, fmt.Sprintf("[paths.%s] bin_dir is %s (the directory of the Python that runs Mailman): the runner program could not be located; name it with --runner", site.Layout, b))
	}
	upper := map[string]string{}
	for k, v := range subs {
		if strings.HasSuffix(k, "_dir") {
			upper[strings.ToUpper(k)] = absPath(v)
		}
	}

	// Runners, in Mailman's order.
	for _, sec := range order {
		name, ok := strings.CutPrefix(sec, "runner.")
		if !ok || strings.HasSuffix(sec, ".master") || strings.HasSuffix(sec, ".template") {
			continue
		}
		r := Runner{Name: name}
		cls, _ := get(sec, "class")
		r.Class = strings.TrimSpace(cls.val)
		inst, _ := get(sec, "instances")
		r.Source = fmt.Sprintf("%s:%d", inst.file, inst.line)
		if inst.file == def.name {
			r.Source = "Mailman's default"
		}
		n, err := strconv.Atoi(strings.TrimSpace(inst.val))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%s: [%s] instances: %q is not a positive whole number", r.Source, sec, inst.val)
		}
		r.Instances = n
		st, _ := get(sec, "start")
		if r.Start, err = asBoolean(st.val); err != nil {
			return nil, fmt.Errorf("%s:%d: [%s] start: %w", st.file, st.line, sec, err)
		}
		sl, _ := get(sec, "sleep_time")
		r.SleepTime = strings.TrimSpace(sl.val)
		p, _ := get(sec, "path")
		if pp := strings.TrimSpace(p.val); pp != "" {
			vars := map[string]string{"name": name}
			for k, v := range upper {
				vars[k] = v
			}
			r.QueueDir = absPath(substitute(pp, vars))
			if strings.Contains(r.QueueDir, "$") {
				site.Notes = append(site.Notes, fmt.Sprintf("%s:%d: [%s] path %s has a variable Mailman's paths do not define", p.file, p.line, sec, pp))
			}
		}
		site.Runners = append(site.Runners, r)
	}
	if len(site.Runners) == 0 {
		return nil, errors.New("no runners found")
	}
	return site, nil
}

// asBoolean is lazr.config's as_boolean.
func asBoolean(v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "true", "yes", "1", "on", "enabled", "enable":
		return true, nil
	case "false", "no", "0", "off", "disabled", "disable":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a boolean (yes or no)", v)
}
