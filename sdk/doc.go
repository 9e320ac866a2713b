// Package sdk holds the reference libraries for persistent workers (handler.worker), one small
// file per language with no third-party dependency: python/qslice_worker.py and
// go/qsworker/qsworker.go. Its tests run them under the real qslice binary. The protocol is
// specified in docs/worker-protocol.md.
package sdk
