// Package mailman reads a GNU Mailman installation's configuration the way Mailman itself does,
// as far as qslice needs it: which runners there are, the queue directory each one scans, how many
// slices (instances) it is cut into, and the program that starts a runner. It writes a qslice
// configuration that supervises those runners per slice, and checks a supervised queue against
// Mailman's rules.
//
// Mailman 3: a lazr.config file (mailman.cfg) layered over Mailman's own defaults (schema.cfg and
// mailman/config/mailman.cfg of Mailman 3.3, embedded here as defaults.cfg), with the path
// substitutions of mailman/config/config.py ($var_dir, $QUEUE_DIR, $name, ...). What qslice cannot
// map is reported, never dropped silently. Mailman 2.1: Defaults.py and mm_cfg.py are Python;
// simple assignments (strings, os.path.join, QRUNNERS lists and appends) are understood, and every
// other statement that touches a setting qslice needs is reported with its line.
//
// The package reads files only; it never starts Mailman.
package mailman
