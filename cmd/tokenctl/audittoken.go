package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/domain"
)

var auditTokenCommand = &command{
	summary:  "make a bearer token for the audit API (--audit-tokens)",
	synopsis: `--name NAME [--save FILE]`,
	help: `Prints a new random bearer token for a caller of tokend's audit listener
(--audit-http), and the line that admits it: add that line to the file of
--audit-tokens on every instance and restart them. The file keeps only the
token's SHA-256; the token itself is shown this once, or with --save FILE
only written to FILE (mode 0600; --json then leaves "token" empty). Needs
no connection to NATS.`,
	setup: func(fs *flag.FlagSet) func(context.Context, *env) error {
		name := fs.String("name", "", "who the token is for, logged with each audit request (`NAME`, required)")
		save := saveFlag(fs)
		return func(_ context.Context, e *env) error {
			if err := domain.ValidateName("--name", *name); err != nil || containsSpace(*name) {
				return usagef("--name must be 1..256 printable bytes without spaces")
			}
			secret := make([]byte, 32)
			rand.Read(secret)
			token := "tda_" + base64.RawURLEncoding.EncodeToString(secret)
			line := api.HashAuditToken(*name, token)
			// With --save the token goes to the file only, so it stays out
			// of terminals, scrollback and CI logs.
			shown := token
			if *save != "" {
				if err := writeSecretFile(*save, token+"\n"); err != nil {
					return err
				}
				shown = ""
			}
			if e.json {
				out, _ := json.Marshal(map[string]string{"name": *name, "token": shown, "tokens_file_line": line})
				fmt.Fprintf(e.stdout, "%s\n", out)
				return nil
			}
			if *save != "" {
				fmt.Fprintf(e.stdout, "token:  written to %s\nline for the --audit-tokens file:\n%s\n", *save, line)
				return nil
			}
			fmt.Fprintf(e.stdout, "token:  %s\nline for the --audit-tokens file:\n%s\n", token, line)
			fmt.Fprintln(e.stderr, "tokenctl: the token is shown once; tokend keeps only its hash")
			return nil
		}
	},
}

func containsSpace(s string) bool {
	for _, r := range s {
		if r == ' ' || r == '\t' {
			return true
		}
	}
	return false
}
