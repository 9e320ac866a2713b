// Package config reads qslice's YAML configuration: defaults first, then the file with unknown keys
// rejected, then command-line overrides. Validate names every bad field by its path and, when the
// file is known, its line ("qslice.yaml:12: queues[1].slices: must be between 1 and 65536").
//
// Secrets never come from the file in clear when it can be avoided: the Consul token is read from
// CONSUL_HTTP_TOKEN, or from consul.token_file; a token given inline is accepted but never printed.
package config
