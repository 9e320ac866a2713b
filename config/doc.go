// Package config reads qslice's YAML configuration: defaults first, then the file with unknown keys
// rejected, then command-line overrides. Validate names every bad field by its path and, when the
// file is known, its line ("qslice.yaml:12: queues[1].slices: must be between 1 and 65536").
//
// Every rule has one definition, with the component that depends on it: names, slice counts and
// homes in failover (ValidateQueues, shared by the standalone and Consul modes), a queue's runner
// settings in runner.Config.Validate, supervision in runner/supervise; this package maps their
// field errors to the file's lines and adds what concerns the file as a whole: directories
// overlapping after cleaning and resolving links, keys written as 0 where 0 would silently mean
// the default. FuzzParse checks that whatever it accepts every mode accepts too.
//
// Secrets never come from the file in clear when it can be avoided: the Consul token is read from
// CONSUL_HTTP_TOKEN, or from consul.token_file; a token given inline is accepted with a warning (Warnings) but never printed.
package config
