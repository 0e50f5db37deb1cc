package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
)

var keysCommand = &command{
	summary:  "print the JWKS that verifies access tokens",
	synopsis: "",
	help:     "Prints the JSON Web Key Set published on <prefix>.keys, indented (raw with --json).",
	setup: func(fs *flag.FlagSet) func(context.Context, *env) error {
		return func(ctx context.Context, e *env) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			raw, err := c.Keys(ctx)
			if err != nil {
				return err
			}
			if e.json {
				printRaw(e.stdout, raw)
				return nil
			}
			var out bytes.Buffer
			if err := json.Indent(&out, raw, "", "  "); err != nil {
				printRaw(e.stdout, raw) // not JSON: show it anyway
				return nil
			}
			printRaw(e.stdout, out.Bytes())
			return nil
		}
	},
}
