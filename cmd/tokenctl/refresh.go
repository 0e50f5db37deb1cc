package main

import (
	"context"
	"encoding/json"
	"flag"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/client"
)

var refreshCommand = &command{
	summary:  "exchange a refresh token for the next one (rotation)",
	synopsis: `--token T|- --client-id C [--scope S] [--audience A] [--ip X] [--user-agent Y] [--save FILE]`,
	help: `Use --token - to read the token from stdin, which keeps it out of shell
history and the process list:
  tokenctl refresh --client-id web-app --token - < token.txt
  pass show tokens/web | tokenctl refresh --client-id web-app --token -

Presenting the just-rotated token again inside the reuse interval (default
10s) returns the same child; later, it is a replay and revokes the family.
With --save FILE the new refresh token goes to FILE only, not to stdout.`,
	jsonHelp: saveJSONHelp,
	setup: func(fs *flag.FlagSet) func(context.Context, *env) error {
		token := fs.String("token", "", "the refresh token (`T`, required); - reads it from stdin")
		clientID := fs.String("client-id", "", "the OAuth client id the family was issued to (`C`, required)")
		scope := fs.String("scope", "", "down-scope the access token to `S`, a subset of the grant")
		audience := fs.String("audience", "", "audience `A` of the access token, one of the family's (default the first)")
		reqContext := contextFlags(fs)
		save := saveFlag(fs)
		return func(ctx context.Context, e *env) error {
			if *token == "" {
				return usagef("--token is required")
			}
			if *clientID == "" {
				return usagef("--client-id is required")
			}
			tok, err := tokenArg(e, "token", *token)
			if err != nil {
				return err
			}
			req := wire.RefreshRequest{RefreshToken: tok, ClientID: *clientID, Audience: *audience, Context: reqContext()}
			if isSet(fs, "scope") {
				req.Scope = scope
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			var raw json.RawMessage
			if err := c.Request(ctx, client.SubjectRefresh, req, &raw); err != nil {
				return err
			}
			return printTokenReply(e, raw, *save)
		}
	},
}
