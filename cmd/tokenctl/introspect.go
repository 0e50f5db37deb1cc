package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/client"
)

var introspectCommand = &command{
	summary:  "tell whether a refresh token is active, and whose it is",
	synopsis: "--token T|- [--min-seq N]",
	help: `Asks the read model (RFC 7662). Only a family's current token is active:
a rotated parent is inactive even inside the reuse interval, and so is any
token of a revoked or expired family. An inactive token is an answer, not a
failure: the exit status is 0 either way.
--token - reads the token from stdin.`,
	setup: func(fs *flag.FlagSet) func(context.Context, *env) error {
		token := fs.String("token", "", "the refresh token (`T`, required); - reads it from stdin")
		minSeq := minSeqFlag(fs)
		return func(ctx context.Context, e *env) error {
			if *token == "" {
				return usagef("--token is required")
			}
			tok, err := tokenArg(e, "token", *token)
			if err != nil {
				return err
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			var raw json.RawMessage
			if err := c.Request(ctx, client.SubjectIntrospect, wire.IntrospectRequest{RefreshToken: tok, MinSeq: *minSeq}, &raw); err != nil {
				return err
			}
			if e.json {
				printRaw(e.stdout, raw)
				return nil
			}
			var r wire.Introspection
			if err := json.Unmarshal(raw, &r); err != nil {
				return fmt.Errorf("decode reply: %w", err)
			}
			printKV(e.stdout, introspectionRows(r))
			return nil
		}
	},
}

func introspectionRows(r wire.Introspection) [][2]string {
	asOf := [2]string{"as_of_seq", fmt.Sprint(r.AsOfSeq)}
	if !r.Active {
		return [][2]string{{"active", "false"}, asOf}
	}
	scope := "(none)"
	if r.Scope != nil && *r.Scope != "" {
		scope = *r.Scope
	}
	aud := "(none)"
	if len(r.Aud) > 0 {
		aud = strings.Join(r.Aud, ", ")
	}
	return [][2]string{
		{"active", "true"},
		{"family", cell(r.FamilyID)},
		{"sub", cell(r.Sub)},
		{"client_id", cell(r.ClientID)},
		{"scope", cell(scope)},
		{"aud", cell(aud)},
		{"exp", localTime(time.Unix(r.Exp, 0))},
		{"iat", localTime(time.Unix(r.Iat, 0))},
		asOf,
	}
}
