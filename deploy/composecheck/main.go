// Command composecheck validates a compose file as `docker compose config`
// (Compose v2) does, with the loader Compose v2 is built on, so that CI can
// check the file against the v2 specification on a machine without Docker.
// It is a module of its own, so that the loader's dependencies stay out of
// evalpool's.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: composecheck FILE")
		os.Exit(2)
	}
	if err := check(context.Background(), os.Args[1]); err != nil {
		fmt.Fprintf(os.Stderr, "composecheck: %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// check loads file with every profile enabled, interpolating the
// environment, and validates it against the Compose specification's schema
// and Compose v2's consistency checks (service references, networks,
// volumes, depends_on conditions).
func check(ctx context.Context, file string) error {
	abs, err := filepath.Abs(file)
	if err != nil {
		return err
	}
	opts, err := cli.NewProjectOptions([]string{abs},
		cli.WithWorkingDirectory(filepath.Dir(abs)),
		cli.WithOsEnv,
		cli.WithProfiles([]string{"*"}),
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		return err
	}
	project, err := opts.LoadProject(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("%s: valid (Compose v2 specification), %d services\n", file, len(project.Services))
	return nil
}
