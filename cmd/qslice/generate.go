package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// newGenerateCmd writes the man pages and shell completions of this very command tree, for
// packages (scripts/release.sh). Hidden: users have `qslice completion SHELL` and `man qslice`.
func newGenerateCmd() *cobra.Command {
	var manDir, bash, zsh, fish string
	cmd := &cobra.Command{
		Use:    "generate [--man DIR] [--bash-completion FILE] [--zsh-completion FILE] [--fish-completion FILE]",
		Short:  "Write man pages and shell completion scripts generated from the command tree",
		Hidden: true,
		Args:   cobra.NoArgs,
		Long: `Write a man page per command (qslice.1, qslice-run.1, ...) into --man DIR, and the completion
scripts for bash, zsh and fish into the files named. The man pages' date is SOURCE_DATE_EPOCH when
set (reproducible builds), else today.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if manDir == "" && bash == "" && zsh == "" && fish == "" {
				return usageErr("generate: nothing to do: give --man, --bash-completion, --zsh-completion or --fish-completion")
			}
			root := cmd.Root()
			if manDir != "" {
				if err := os.MkdirAll(manDir, 0o755); err != nil {
					return fmt.Errorf("generate man pages: %w", err)
				}
				root.DisableAutoGenTag = true // no generation date in the pages: reproducible
				header := &doc.GenManHeader{Section: "1", Source: "qslice " + build.Version, Manual: "qslice manual"}
				if err := doc.GenManTree(root, header, manDir); err != nil {
					return fmt.Errorf("generate man pages in %s: %w", manDir, err)
				}
			}
			for _, c := range []struct {
				file string
				gen  func(f *os.File) error
			}{
				{bash, func(f *os.File) error { return root.GenBashCompletionV2(f, true) }},
				{zsh, func(f *os.File) error { return root.GenZshCompletion(f) }},
				{fish, func(f *os.File) error { return root.GenFishCompletion(f, true) }},
			} {
				if c.file == "" {
					continue
				}
				if err := writeGenerated(c.file, c.gen); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&manDir, "man", "", "directory for the man pages (section 1)")
	cmd.Flags().StringVar(&bash, "bash-completion", "", "file for the bash completion script")
	cmd.Flags().StringVar(&zsh, "zsh-completion", "", "file for the zsh completion script")
	cmd.Flags().StringVar(&fish, "fish-completion", "", "file for the fish completion script")
	return cmd
}

func writeGenerated(path string, gen func(*os.File) error) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("generate %s: %w", path, err)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("generate %s: %w", path, err)
	}
	if err := gen(f); err != nil {
		f.Close()
		return fmt.Errorf("generate %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("generate %s: %w", path, err)
	}
	return nil
}
