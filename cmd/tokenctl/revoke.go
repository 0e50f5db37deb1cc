package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"strings"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/client"
)

var revokeCommand = &command{
	summary:  "revoke a token's family, a family, or every family of a subject or client",
	synopsis: `(--token T|- | --family ID | --subject S | --client-id C) [--reason R]`,
	help: `Give exactly one selector. --token - reads the token from stdin.
Revoking something unknown or already revoked is not an error: it prints
revoked_families: 0.`,
	setup: func(fs *flag.FlagSet) func(context.Context, *env) error {
		token := fs.String("token", "", "revoke the family of refresh token `T`; - reads it from stdin")
		family := fs.String("family", "", "revoke the family with this `ID`")
		subject := fs.String("subject", "", "revoke every family of subject `S`")
		clientID := fs.String("client-id", "", "revoke every family of client `C`")
		reason := fs.String("reason", "", "`R`, recorded on the family.revoked events (at most 256 bytes)")
		reqContext := contextFlags(fs)
		return func(ctx context.Context, e *env) error {
			var req wire.RevokeRequest
			selectors := map[string]**string{"token": &req.RefreshToken, "family": &req.FamilyID,
				"subject": &req.Subject, "client-id": &req.ClientID}
			values := map[string]*string{"token": token, "family": family, "subject": subject, "client-id": clientID}
			var given []string
			for _, name := range []string{"token", "family", "subject", "client-id"} {
				if !isSet(fs, name) {
					continue
				}
				if *values[name] == "" {
					return usagef("--%s must not be empty", name)
				}
				given = append(given, "--"+name)
				*selectors[name] = values[name]
			}
			if len(given) != 1 {
				if len(given) == 0 {
					return usagef("one of --token, --family, --subject, --client-id is required")
				}
				return usagef("give only one of %s", strings.Join(given, ", "))
			}
			if req.RefreshToken != nil {
				tok, err := tokenArg(e, "token", *req.RefreshToken)
				if err != nil {
					return err
				}
				req.RefreshToken = &tok
			}
			req.Reason = *reason
			req.Context = reqContext()
			c, err := e.client()
			if err != nil {
				return err
			}
			var raw json.RawMessage
			if err := c.Request(ctx, client.SubjectRevoke, req, &raw); err != nil {
				return err
			}
			if e.json {
				printRaw(e.stdout, raw)
				return nil
			}
			var r wire.RevokeReply
			if err := json.Unmarshal(raw, &r); err != nil {
				return fmt.Errorf("decode reply: %w", err)
			}
			rows := [][2]string{{"revoked_families", fmt.Sprint(r.RevokedFamilies)}}
			if r.Seq != 0 {
				rows = append(rows, [2]string{"seq", fmt.Sprint(r.Seq)})
			}
			printKV(e.stdout, rows)
			return nil
		}
	},
}
