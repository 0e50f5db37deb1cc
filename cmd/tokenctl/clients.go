package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/domain"
)

var clientsCommand = &command{
	summary: "register OAuth clients, rotate their secrets, show their history",
	synopsis: "list | show ID | history ID | add ID --type T [settings] | update ID [settings]\n" +
		"  | rotate-secret ID [--grace D] | remove ID",
	jsonHelp: "print the reply JSON as received; when add, update or rotate-secret makes a secret\n" +
		"(without --save), the reply gets \"client_secret\" as its first member",
	args: 2,
	help: `The client registry (KV bucket TOKENS_CLIENTS) is shared by every tokend
instance; a change reaches all of them within moments. Every change is
recorded with who made it (--by, default your login name) and when: clients history.

  clients list                 every client, as a table
  clients show ID              one client
  clients history ID           its changes, oldest first (the last 64)
  clients add ID --type public|confidential --scope S --audience A ...
  clients update ID [settings] change the settings given; the others stay
  clients rotate-secret ID     a new secret; the old one verifies for --grace
  clients remove ID            unregister it (its history stays)

Settings (add, update): --type, --auth-method, --scope, --audience, --jwks,
--access-ttl, --refresh-idle-ttl, --refresh-absolute-ttl, --reuse-interval,
--on-replay, --resource, --ssf-receiver, --dpop-bound, --dpop-nonce. --scope and --audience repeat, and each value may list several
separated by spaces; a client may be granted only what they list (none if
they are not given to add; on update, --scope '' allows none). Lifetimes of
0 mean the deployment's (tokend --access-ttl, ...). --resource A (repeatable)
makes a confidential client a resource server for audience A: it may
introspect access tokens issued for A to any client (POST /oauth2/introspect).
--dpop-bound (RFC 9449 dpop_bound_access_tokens) makes every family of the
client bound to a DPoP key and every refresh carry a proof; --dpop-nonce
makes its proofs carry a server nonce.
--ssf-receiver own|all makes a confidential client an SSF receiver: it gets
access tokens for the SSF endpoints (grant_type=client_credentials) and sees
the events of its own client (own) or every event (all); on update,
--ssf-receiver '' ends that.

Secrets: a confidential client with client_secret_basic (the default) or
client_secret_post gets a secret made here, 256 random bits, printed once;
tokend stores and sees only its SHA-256. --save FILE writes it to FILE
(mode 0600, a new file: tokenctl never overwrites one) instead of printing
it. Keep it like a password: it cannot be shown again, only replaced with
rotate-secret. private_key_jwt clients
register their public keys instead (--jwks FILE, a JWK Set).

Needs the admin role (tokens.admin.clients.*).`,
	setup: func(fs *flag.FlagSet) func(context.Context, *env) error {
		var scopes, audiences, resources stringList
		clientType := fs.String("type", "", "add, update: client type `T`, public or confidential")
		method := fs.String("auth-method", "", "add, update: token endpoint authentication `M`: none (public clients), client_secret_basic\n"+
			"(confidential default), client_secret_post or private_key_jwt")
		fs.Var(&scopes, "scope", "add, update: scope(s) `S` the client may be granted (repeatable; space-separated)")
		fs.Var(&audiences, "audience", "add, update: resource `A` the client may get tokens for (repeatable)")
		fs.Var(&resources, "resource", "add, update: audience `A` of access tokens the client may introspect as a resource server\n"+
			"(repeatable; confidential clients; on update, --resource '' makes it none)")
		receiver := fs.String("ssf-receiver", "", "add, update: make a confidential client an SSF receiver of `R`: own (its own client's events)\n"+
			"or all (every event); on update, --ssf-receiver '' makes it none")
		jwks := fs.String("jwks", "", "add, update: the client's public keys, a JWK Set in `FILE` (private_key_jwt)")
		accessTTL := fs.Duration("access-ttl", 0, "add, update: lifetime `D` of the client's access tokens (default 0: tokend's --access-ttl)")
		idleTTL := fs.Duration("refresh-idle-ttl", 0, "add, update: the client's families die unused for `D` (default 0: tokend's --refresh-idle-ttl)")
		absoluteTTL := fs.Duration("refresh-absolute-ttl", 0, "add, update: the client's families die `D` after issue (default 0: tokend's --refresh-absolute-ttl)")
		reuse := fs.Duration("reuse-interval", 0, "add, update: the client's reuse interval `D` (default 0: tokend's --reuse-interval)")
		onReplay := fs.String("on-replay", "", "add, update: what a replayed token does, `R`: revoke_family (the default), revoke_subject or audit_only")
		dpopBound := fs.Bool("dpop-bound", false, "add, update: the client's families are bound to a DPoP key and every refresh carries a proof (RFC 9449 dpop_bound_access_tokens)")
		dpopNonce := fs.Bool("dpop-nonce", false, "add, update: the client's DPoP proofs must carry a server nonce (RFC 9449 section 8)")
		grace := fs.Duration("grace", domain.DefaultSecretGrace, "rotate-secret: the old secret keeps working for `D` (default 24h; 0: it stops at once)")
		save := fs.String("save", "", "add, update, rotate-secret: write the new secret to `FILE` (mode 0600; it must not exist) instead of printing it")
		by := fs.String("by", operator(), "add, update, rotate-secret, remove: who makes the change, `NAME` (recorded; default: your login name)")
		settings := []string{"type", "auth-method", "scope", "audience", "resource", "ssf-receiver", "jwks", "access-ttl", "refresh-idle-ttl",
			"refresh-absolute-ttl", "reuse-interval", "on-replay", "dpop-bound", "dpop-nonce"}
		return func(ctx context.Context, e *env) error {
			sub, id := "", ""
			if len(e.args) > 0 {
				sub = e.args[0]
			}
			if len(e.args) > 1 {
				id = e.args[1]
			}
			changes := []string{"add", "update", "rotate-secret", "remove"}
			switch {
			case sub == "":
				return usagef("a subcommand is required: list, show, history, add, update, rotate-secret or remove")
			case !slices.Contains(append([]string{"list", "show", "history"}, changes...), sub):
				return usagef("unknown subcommand %q: want list, show, history, add, update, rotate-secret or remove", sub)
			case sub == "list" && id != "":
				return usagef("list takes no client id")
			case sub != "list" && id == "":
				return usagef("%s needs a client id", sub)
			case sub == "add" && !isSet(fs, "type"):
				return usagef("--type is required: public or confidential")
			case isSet(fs, "grace") && sub != "rotate-secret":
				return usagef("--grace goes with rotate-secret")
			case isSet(fs, "save") && !slices.Contains([]string{"add", "update", "rotate-secret"}, sub):
				return usagef("--save goes with add, update or rotate-secret")
			case isSet(fs, "by") && !slices.Contains(changes, sub):
				return usagef("--by goes with add, update, rotate-secret or remove")
			case slices.Contains(changes, sub) && *by == "":
				return usagef("--by is required (no login name found): who makes this change")
			case isSet(fs, "save") && *save == "":
				return usagef("--save needs a file name")
			case isSet(fs, "save") && exists(*save):
				return usagef("--save: %s exists; a saved secret is never overwritten: remove it or name another file", *save)
			case sub == "add" && isSet(fs, "save") && !effectiveMethod(api.ClientPutRequest{Type: *clientType, AuthMethod: *method}).UsesSecret():
				return usagef("--save: a %s client with auth method %s has no secret", *clientType, effectiveMethod(api.ClientPutRequest{Type: *clientType, AuthMethod: *method}))
			}
			if sub != "add" && sub != "update" {
				for _, name := range settings {
					if isSet(fs, name) {
						return usagef("--%s goes with add or update", name)
					}
				}
			}
			var jwksData json.RawMessage
			if isSet(fs, "jwks") {
				data, err := os.ReadFile(*jwks)
				if err != nil {
					return usagef("--jwks: %v", err)
				}
				if !json.Valid(data) {
					return usagef("--jwks: %s is not JSON", *jwks)
				}
				jwksData = data
			}
			if _, err := e.client(); err != nil {
				return err
			}
			switch sub {
			case "list":
				return listClients(ctx, e)
			case "show":
				return showClient(ctx, e, id)
			case "history":
				return clientHistory(ctx, e, id)
			case "remove":
				return removeClient(ctx, e, id, *by)
			case "rotate-secret":
				return rotateSecret(ctx, e, id, *grace, *save, *by)
			}
			req := api.ClientPutRequest{ClientID: id, By: *by}
			var old domain.AuthMethod
			if sub == "update" {
				var cur api.ClientView
				if err := e.c.Request(ctx, api.SubjectClientsGet, api.ClientRequest{ClientID: id}, &cur); err != nil {
					return err
				}
				old = domain.AuthMethod(cur.AuthMethod)
				req = api.ClientPutRequest{ClientID: id, Type: cur.Type, AuthMethod: cur.AuthMethod, Scopes: &cur.Scopes, Audiences: &cur.Audiences, Resources: cur.Resources, SSFReceiver: cur.SSFReceiver,
					JWKS: cur.JWKS, AccessTTL: cur.AccessTTL, RefreshIdleTTL: cur.RefreshIdleTTL, RefreshAbsoluteTTL: cur.RefreshAbsoluteTTL,
					ReuseInterval: cur.ReuseInterval, OnReplay: cur.OnReplay, DPoPBound: cur.DPoPBound, DPoPRequireNonce: cur.DPoPRequireNonce,
					Revision: cur.Revision, By: *by}
				if isSet(fs, "type") && *clientType != cur.Type && !isSet(fs, "auth-method") {
					req.AuthMethod = "" // the new type's default
				}
			}
			if isSet(fs, "type") || sub == "add" {
				req.Type = *clientType
			}
			if isSet(fs, "auth-method") {
				req.AuthMethod = *method
			}
			if isSet(fs, "scope") || sub == "add" {
				req.Scopes = splitList(scopes)
			}
			if isSet(fs, "audience") || sub == "add" {
				req.Audiences = splitList(audiences)
			}
			if isSet(fs, "resource") {
				req.Resources = *splitList(resources)
			}
			if isSet(fs, "ssf-receiver") {
				req.SSFReceiver = *receiver
			}
			for _, d := range []struct {
				flag  string
				value time.Duration
				into  *string
			}{{"access-ttl", *accessTTL, &req.AccessTTL}, {"refresh-idle-ttl", *idleTTL, &req.RefreshIdleTTL},
				{"refresh-absolute-ttl", *absoluteTTL, &req.RefreshAbsoluteTTL}, {"reuse-interval", *reuse, &req.ReuseInterval}} {
				if isSet(fs, d.flag) {
					*d.into = d.value.String()
				}
			}
			if isSet(fs, "on-replay") {
				req.OnReplay = *onReplay
			}
			if isSet(fs, "dpop-bound") {
				req.DPoPBound = *dpopBound
			}
			if isSet(fs, "dpop-nonce") {
				req.DPoPRequireNonce = *dpopNonce
			}
			method := effectiveMethod(req)
			switch {
			case jwksData != nil:
				req.JWKS = jwksData
			case method != domain.AuthPrivateKeyJWT:
				req.JWKS = nil // dropped with the method that used it
			}
			// A secret is made for a client that moves to a secret method:
			// one that has a secret keeps it (rotate-secret replaces it).
			var secret string
			if method.UsesSecret() && !old.UsesSecret() {
				secret = newClientSecret()
				req.SecretSHA256 = domain.HashClientSecret(secret)
			} else if isSet(fs, "save") {
				return usagef("--save: this %s makes no secret (auth method %s)", sub, method)
			}
			return sendWithSecret(ctx, e, api.SubjectClientsPut, req, secret, *save)
		}
	},
}

// splitList reads repeatable flag values that may each hold several
// space-separated items; never nil, so an empty list allows none.
func splitList(values []string) *[]string {
	out := []string{}
	for _, v := range values {
		out = append(out, strings.Fields(v)...)
	}
	return &out
}

// effectiveMethod is the auth method tokend will record for req, defaults
// included.
func effectiveMethod(req api.ClientPutRequest) domain.AuthMethod {
	if req.AuthMethod != "" {
		return domain.AuthMethod(req.AuthMethod)
	}
	if req.Type == string(domain.ClientConfidential) {
		return domain.AuthSecretBasic
	}
	return domain.AuthNone
}

// newClientSecret returns 256 random bits, base64url-encoded.
func newClientSecret() string {
	var b [32]byte
	rand.Read(b[:]) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// sendWithSecret sends a change and prints its reply; secret, if not
// empty, is the new secret whose hash req carries: it goes to the file
// save, or else is printed once.
func sendWithSecret(ctx context.Context, e *env, subject string, req any, secret, save string) error {
	raw, shown, saveErr, err := requestWithSecret(ctx, e, subject, req, secret, save)
	if err != nil {
		return err
	}
	var ch api.ClientChangeView
	if err := json.Unmarshal(raw, &ch); err != nil {
		printRaw(e.stdout, raw)
		return fmt.Errorf("decode reply: %w", err)
	}
	if e.json {
		if shown {
			raw = withSecretMember(raw, "client_secret", secret)
		}
		printRaw(e.stdout, raw)
	} else {
		verb := map[string]string{"create": "registered", "update": "updated", "rotate_secret": "gave a new secret to"}[ch.Action]
		fmt.Fprintf(e.stdout, "%s client %s (revision %d)\n", cmp.Or(verb, cell(ch.Action)), cell(clientIDOf(ch)), ch.Revision)
		switch {
		case shown:
			fmt.Fprintf(e.stdout, "client_secret: %s\n  shown once: tokend keeps only its SHA-256. Store it now.\n", secret)
		case secret != "":
			fmt.Fprintf(e.stdout, "client_secret: written to %s\n", save)
		}
		if ch.Client != nil {
			fmt.Fprintln(e.stdout)
			printClient(e.stdout, *ch.Client)
		}
	}
	if saveErr != nil {
		return fmt.Errorf("--save: %w (the secret is printed above instead)", saveErr)
	}
	return nil
}

func clientIDOf(ch api.ClientChangeView) string {
	if ch.Client == nil {
		return ""
	}
	return ch.Client.ClientID
}

func rotateSecret(ctx context.Context, e *env, id string, grace time.Duration, save, by string) error {
	secret := newClientSecret()
	g := grace.String()
	req := api.ClientRotateSecretRequest{ClientID: id, SecretSHA256: domain.HashClientSecret(secret), Grace: &g, By: by}
	return sendWithSecret(ctx, e, api.SubjectClientsRotateSecret, req, secret, save)
}

func removeClient(ctx context.Context, e *env, id, by string) error {
	return show(ctx, e, api.SubjectClientsRemove, api.ClientRemoveRequest{ClientID: id, By: by}, func(ch api.ClientChangeView) error {
		fmt.Fprintf(e.stdout, "removed client %s (revision %d); its history stays: tokenctl clients history\n", cell(id), ch.Revision)
		return nil
	})
}

func showClient(ctx context.Context, e *env, id string) error {
	return show(ctx, e, api.SubjectClientsGet, api.ClientRequest{ClientID: id}, func(v api.ClientView) error {
		printClient(e.stdout, v)
		return nil
	})
}

func listClients(ctx context.Context, e *env) error {
	return show(ctx, e, api.SubjectClientsList, struct{}{}, func(list api.ClientList) error {
		if len(list.Clients) == 0 {
			fmt.Fprintln(e.stdout, "no client is registered")
			return nil
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "CLIENT_ID\tTYPE\tAUTH_METHOD\tSCOPES\tAUDIENCES\tSECRETS\tREVISION\tUPDATED\tSSF_RECEIVER")
		for _, c := range list.Clients {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", cell(c.ClientID), cell(c.Type), cell(c.AuthMethod),
				listCell(c.Scopes), listCell(c.Audiences), len(c.Secrets), c.Revision, keyTime(c.UpdatedAt), receiverCell(c.SSFReceiver))
		}
		return tw.Flush()
	})
}

func clientHistory(ctx context.Context, e *env, id string) error {
	return show(ctx, e, api.SubjectClientsHistory, api.ClientRequest{ClientID: id}, func(h api.ClientHistory) error {
		tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "REVISION\tACTION\tAT\tBY\tNATS_USER\tCLIENT")
		for _, ch := range h.Changes {
			what := "(removed)"
			if c := ch.Client; c != nil {
				what = fmt.Sprintf("%s %s, %d secret(s), scopes %s, audiences %s", cell(c.Type), cell(c.AuthMethod), len(c.Secrets),
					listCell(c.Scopes), listCell(c.Audiences))
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", ch.Revision, cell(ch.Action), keyTime(ch.At), cell(ch.By), cell(ch.NATSUser), what)
		}
		return tw.Flush()
	})
}

// printClient shows a client as aligned lines.
func printClient(w io.Writer, c api.ClientView) {
	rows := [][2]string{
		{"client_id", cell(c.ClientID)},
		{"revision", fmt.Sprint(c.Revision)},
		{"type", cell(c.Type)},
		{"auth_method", cell(c.AuthMethod)},
		{"scopes", listCell(c.Scopes)},
		{"audiences", listCell(c.Audiences)},
		{"resources", listCell(c.Resources)},
		{"ssf_receiver", receiverCell(c.SSFReceiver)},
	}
	for i, s := range c.Secrets {
		v := "made " + keyTime(s.CreatedAt)
		if s.ExpiresAt != "" {
			v += ", stops verifying " + keyTime(s.ExpiresAt)
		}
		rows = append(rows, [2]string{fmt.Sprintf("secret %d", i+1), v})
	}
	if c.AuthMethod == string(domain.AuthPrivateKeyJWT) {
		rows = append(rows, [2]string{"jwks", fmt.Sprintf("%d public key(s)", c.JWKSKeys)})
	}
	for _, d := range [][2]string{{"access_ttl", c.AccessTTL}, {"refresh_idle_ttl", c.RefreshIdleTTL},
		{"refresh_absolute_ttl", c.RefreshAbsoluteTTL}, {"reuse_interval", c.ReuseInterval}} {
		if d[1] == "0s" {
			d[1] = "tokend's default"
		}
		rows = append(rows, [2]string{d[0], cell(d[1])})
	}
	rows = append(rows, [2]string{"on_replay", cell(c.OnReplay)})
	if dpop := dpopCell(c); dpop != "" {
		rows = append(rows, [2]string{"dpop", dpop})
	}
	rows = append(rows, [][2]string{{"created", keyTime(c.CreatedAt)}, {"updated", keyTime(c.UpdatedAt)}}...)
	printKV(w, rows)
}

// dpopCell shows a client's DPoP settings, "" when it has none.
func dpopCell(c api.ClientView) string {
	var parts []string
	if c.DPoPBound {
		parts = append(parts, "families bound to a key (dpop_bound_access_tokens)")
	}
	if c.DPoPRequireNonce {
		parts = append(parts, "nonce required")
	}
	return strings.Join(parts, ", ")
}

// listCell shows a scope or audience list; "(none)": nothing may be granted.
func listCell(items []string) string {
	if len(items) == 0 {
		return "(none)"
	}
	out := make([]string, len(items))
	for i, s := range items {
		out[i] = cell(s)
	}
	return strings.Join(out, " ")
}

// receiverCell shows a client's SSF receiver role; "-": not a receiver.
func receiverCell(role string) string {
	if role == "" {
		return "-"
	}
	return cell(role)
}

// stageSecretFile writes data to a new file next to path, readable by the
// owner only; commit links it to path, abort removes it. Written before
// the request, so a file that cannot be written changes nothing; linked
// after it, and never over an existing file, which may hold a secret
// still in use (another client's, say).
// requestWithSecret sends req, which carries secret (or its hash), with
// secret written to the file save before the request and linked after it,
// so that neither a refused request leaves a file nor a lost file a secret
// nobody holds. shown says the caller must print the secret: there is one,
// and no file (none asked for, or saveErr).
func requestWithSecret(ctx context.Context, e *env, subject string, req any, secret, save string) (raw json.RawMessage, shown bool, saveErr, err error) {
	commit, abort := func() error { return nil }, func() {}
	if secret != "" && save != "" {
		if commit, abort, err = stageSecretFile(save, secret+"\n"); err != nil {
			return nil, false, nil, fmt.Errorf("--save: %w", err)
		}
	}
	if err := e.c.Request(ctx, subject, req, &raw); err != nil {
		abort()
		return nil, false, nil, err
	}
	if saveErr = commit(); saveErr != nil {
		abort() // the caller prints the secret instead
	}
	return raw, secret != "" && (save == "" || saveErr != nil), saveErr, nil
}

// withSecretMember puts "name": secret first in the JSON object raw, for
// --json output that shows the secret once.
func withSecretMember(raw json.RawMessage, name, secret string) json.RawMessage {
	member, _ := json.Marshal(map[string]string{name: secret})
	return append(append(member[:len(member)-1], ','), raw[1:]...)
}

func stageSecretFile(path, data string) (commit func() error, abort func(), err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return nil, nil, err
	}
	abort = func() { os.Remove(f.Name()) }
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		abort()
		return nil, nil, err
	}
	if _, err := f.WriteString(data); err != nil {
		f.Close()
		abort()
		return nil, nil, err
	}
	if err := f.Close(); err != nil {
		abort()
		return nil, nil, err
	}
	commit = func() error {
		if err := os.Link(f.Name(), path); err != nil {
			return err
		}
		abort()
		return nil
	}
	return commit, abort, nil
}

// exists reports whether there is a file (or anything else) at path.
func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// operator is the login name changes are recorded under by default: $USER,
// else the account's name (containers often set no $USER).
func operator() string {
	if name := getenv("USER"); name != "" {
		return name
	}
	return accountName()
}

// accountName is the current account's name, "" if unknown; replaceable in
// tests.
var accountName = func() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return ""
}
