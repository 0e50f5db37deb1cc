package main

import (
	"context"
	"encoding/json"
	"flag"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/client"
)

var issueCommand = &command{
	summary:  "start a new token family",
	synopsis: `--subject S --client-id C [--scope "a b"] [--audience URL]... [--ip X] [--user-agent Y] [--dpop-jkt T] [--save FILE]`,
	help: `Prints the family id, the first refresh token (with --save, only into FILE)
and an access token. --audience may repeat; the first one is the default
audience of refreshes. --dpop-jkt binds the family to the DPoP key whose
RFC 7638 thumbprint is T: every refresh then needs a proof by that key.`,
	jsonHelp: saveJSONHelp,
	setup: func(fs *flag.FlagSet) func(context.Context, *env) error {
		subject := fs.String("subject", "", "the user the family belongs to (`S`, required)")
		clientID := fs.String("client-id", "", "the OAuth client id (`C`, required)")
		scope := fs.String("scope", "", "space-separated granted `scope` (may be empty)")
		var audience stringList
		fs.Var(&audience, "audience", "resource `URL` the family may mint access tokens for (repeatable)")
		jkt := fs.String("dpop-jkt", "", "bind the family to the DPoP key with this RFC 7638 SHA-256 `thumbprint` (base64url)")
		reqContext := contextFlags(fs)
		save := saveFlag(fs)
		return func(ctx context.Context, e *env) error {
			if *subject == "" {
				return usagef("--subject is required")
			}
			if *clientID == "" {
				return usagef("--client-id is required")
			}
			req := wire.IssueRequest{Subject: *subject, ClientID: *clientID, Scope: *scope,
				Audience: audience, Context: reqContext(), DPoPJKT: *jkt}
			c, err := e.client()
			if err != nil {
				return err
			}
			var raw json.RawMessage
			if err := c.Request(ctx, client.SubjectIssue, req, &raw); err != nil {
				return err
			}
			return printTokenReply(e, raw, *save)
		}
	},
}
