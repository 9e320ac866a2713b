// Package runner processes the messages of one queue directory that fall in the slices this node
// owns, with crash-safe claiming, per-message lock files, and handlers run in process or as commands.
package runner
