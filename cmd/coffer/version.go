package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"coffer/server"
)

// version is the release of this binary, the server's (they ship
// together); a build may override it with -ldflags "-X main.version=…".
var version = server.Version

// versionJSON is the JSON output of `coffer version`.
type versionJSON struct {
	Version   string `json:"version"`
	Revision  string `json:"revision,omitempty"`
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"`
}

func cmdVersion(e *env, args []string) error {
	f := newFlags("coffer version", "[flags]", `
Print the version of this binary.`)
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(args); err != nil {
		return err
	}
	v := versionJSON{Version: version, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				v.Revision = s.Value
			}
		}
	}
	if f.format == formatJSON {
		return printJSON(e.stdout, v)
	}
	rev := ""
	if v.Revision != "" {
		rev = ", revision " + v.Revision[:min(12, len(v.Revision))]
	}
	fmt.Fprintf(e.stdout, "coffer v%s (%s %s%s)\n", v.Version, v.GoVersion, v.Platform, rev)
	return nil
}
