package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/client"
)

var keysCommand = &command{
	summary:  "print the JWKS, list the keys, rotate them, or revoke one",
	synopsis: "[list | rotate [--publish-for D] | revoke KID --reason R [--revision N] [--by NAME]] [--instances N]",
	jsonHelp: "print JSON as received: the JWKS; for list each instance's status, one per line (JSON Lines);\n" +
		"for rotate the promote reply; for revoke the revoke reply",
	long: true,
	help: `Without a subcommand, prints the JSON Web Key Set published on
<prefix>.keys, indented (raw with --json).

keys list asks every tokend instance which keyset revision it has loaded
(<prefix>.admin.keys.status) and prints the keys: their kind (mac signs
refresh tokens, signing signs access tokens, set signs the Security Event
Tokens of SSF streams), id, state (next: staged, verifies and is published
but signs nothing yet; current; retired: verifies until its expiry), and
times. Key material never leaves tokend.

keys rotate replaces the keys of every kind without refusing a single valid
token or SET:
  1. stage a new MAC key, signing key and SET key (<prefix>.admin.keys.stage);
  2. wait until every running instance has loaded them (instances are
     counted with $SRV.INFO.tokens; --instances N waits for at least N);
  3. wait --publish-for, so resource servers and SSF receivers that cache
     the JWKS (/.well-known/jwks.json allows 5 minutes) fetch the new
     signing and SET keys;
  4. promote them (<prefix>.admin.keys.promote): new tokens are minted and
     signed with the new keys; the old ones verify until everything they
     made has expired;
  5. wait until every instance has loaded the promotion.
Progress goes to stderr. If it stops before the promotion, run it again:
keys already staged are kept.

keys revoke KID removes a compromised key at once, whatever its state
(<prefix>.admin.keys.revoke): from then on nothing made under it verifies.
If it was the current key of its kind, the staged key of that kind becomes
current in the same change, else a new key; a new signing or SET key
reaches resource servers and SSF receivers at their next JWKS fetch. --reason is required and logged
with --by. It then waits until every instance has loaded the change and
fails if one has not. See docs/operations.md, "A compromised key", for what
it does to users.

list, rotate and revoke need the admin role. --timeout bounds connecting,
each request and each wait for the instances, not --publish-for.`,
	args: 2,
	setup: func(fs *flag.FlagSet) func(context.Context, *env) error {
		publishFor := fs.Duration("publish-for", 5*time.Minute, "rotate: wait `D` between staging and promoting, for resource servers caching the JWKS")
		instances := fs.Int("instances", 0, "list, rotate, revoke: expect at least `N` tokend instances (default: as many as answer)")
		reason := fs.String("reason", "", "revoke: why the key is revoked, `R` (required; logged)")
		revision := fs.Uint64("revision", 0, "revoke: only if the keyset is still at revision `N` (as keys list shows it)")
		by := fs.String("by", operator(), "revoke: who revokes the key, `NAME` (logged; default: your login name)")
		return func(ctx context.Context, e *env) error {
			sub, kid := "", ""
			if len(e.args) > 0 {
				sub = e.args[0]
			}
			if len(e.args) > 1 {
				kid = e.args[1]
			}
			switch {
			case sub != "" && sub != "list" && sub != "rotate" && sub != "revoke":
				return usagef("unknown subcommand %q: want list, rotate or revoke", sub)
			case sub == "revoke" && kid == "":
				return usagef("revoke needs the id of the key (tokenctl keys list)")
			case sub != "revoke" && kid != "":
				return usagef("unexpected argument %q", kid)
			case sub == "revoke" && *reason == "":
				return usagef("--reason is required: why the key is revoked")
			case sub == "revoke" && *by == "":
				return usagef("--by is required (no login name found): who revokes the key")
			case sub != "revoke" && (isSet(fs, "reason") || isSet(fs, "revision") || isSet(fs, "by")):
				return usagef("--reason, --revision and --by go with revoke")
			case isSet(fs, "publish-for") && sub != "rotate":
				return usagef("--publish-for goes with rotate")
			case isSet(fs, "instances") && sub == "":
				return usagef("--instances goes with list, rotate or revoke")
			case *publishFor < 0 || *instances < 0:
				return usagef("--publish-for and --instances must not be negative")
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			switch sub {
			case "list":
				return listKeys(ctx, e, *instances)
			case "rotate":
				return rotateKeys(ctx, e, *publishFor, *instances)
			case "revoke":
				return revokeKey(ctx, e, api.KeysRevokeRequest{Kid: kid, Reason: *reason, Revision: *revision, By: *by}, *instances)
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

func listKeys(ctx context.Context, e *env, want int) error {
	ids, err := discoverInstances(ctx, e, want)
	if err != nil {
		return err
	}
	statuses, err := awaitKeys(ctx, e, ids, 0)
	if err != nil {
		return err
	}
	if e.json {
		for _, id := range slices.Sorted(maps.Keys(statuses)) {
			printRaw(e.stdout, statuses[id].raw)
		}
		return nil
	}
	newest := statuses[slices.MaxFunc(slices.Collect(maps.Keys(statuses)), func(a, b string) int {
		return cmp.Compare(statuses[a].Revision, statuses[b].Revision)
	})]
	fmt.Fprintf(e.stdout, "keyset revision %d; %s\n\n", newest.Revision, describeInstances(statuses))
	printKeyTable(e.stdout, newest.Keys)
	return nil
}

func rotateKeys(ctx context.Context, e *env, publishFor time.Duration, want int) error {
	ids, err := discoverInstances(ctx, e, want)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "tokenctl: %d tokend instance(s) running\n", len(ids))
	var staged api.KeysStatus
	if err := e.c.Request(ctx, api.SubjectKeysStage, api.KeysRequest{}, &staged); err != nil {
		return fmt.Errorf("stage: %w", err)
	}
	fmt.Fprintf(e.stderr, "tokenctl: staged %s at revision %d\n", describeKeys(staged.Keys, "next"), staged.Revision)
	if _, err := awaitKeys(ctx, e, ids, staged.Revision); err != nil {
		return fmt.Errorf("%w; nothing was promoted: the staged keys are published and verify, but sign nothing; run rotate again", err)
	}
	fmt.Fprintf(e.stderr, "tokenctl: every instance has loaded revision %d\n", staged.Revision)
	if publishFor > 0 {
		fmt.Fprintf(e.stderr, "tokenctl: waiting %v for resource servers to fetch the new JWKS (--publish-for)\n", publishFor)
		select {
		case <-ctx.Done():
			return fmt.Errorf("before promoting: %w", ctx.Err())
		case <-time.After(publishFor):
		}
	}
	var raw json.RawMessage
	if err := e.c.Request(ctx, api.SubjectKeysPromote, api.KeysRequest{Revision: staged.Revision}, &raw); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	var promoted api.KeysStatus
	if err := json.Unmarshal(raw, &promoted); err != nil {
		return fmt.Errorf("promote: decode reply: %w", err)
	}
	fmt.Fprintf(e.stderr, "tokenctl: promoted at revision %d\n", promoted.Revision)
	// The promotion stands whatever happens now; an instance that has not
	// loaded it yet still verifies the new keys (they were staged) and
	// follows within moments.
	if _, err := awaitKeys(ctx, e, ids, promoted.Revision); err != nil {
		fmt.Fprintf(e.stderr, "tokenctl: warning: %v\n", err)
	} else {
		fmt.Fprintf(e.stderr, "tokenctl: every instance has loaded revision %d\n", promoted.Revision)
	}
	if e.json {
		printRaw(e.stdout, raw)
		return nil
	}
	fmt.Fprintf(e.stdout, "rotated: %s are current (keyset revision %d)\n\n", describeKeys(promoted.Keys, "current"), promoted.Revision)
	printKeyTable(e.stdout, promoted.Keys)
	return nil
}

func revokeKey(ctx context.Context, e *env, req api.KeysRevokeRequest, want int) error {
	// The instances are found first, so the wait below covers every one
	// that was running when the key was revoked.
	ids, err := discoverInstances(ctx, e, want)
	if err != nil {
		return err
	}
	var raw json.RawMessage
	if err := e.c.Request(ctx, api.SubjectKeysRevoke, req, &raw); err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	var r api.KeysRevoked
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("revoke: decode reply: %w", err)
	}
	if e.json {
		printRaw(e.stdout, raw)
	} else {
		fmt.Fprintf(e.stdout, "revoked %s key %s (it was %s) at keyset revision %d\n", cell(r.Revoked.Kind), cell(r.Revoked.Kid), cell(r.Revoked.State), r.Revision)
		if n := r.Replacement; n != nil {
			from := "the staged key"
			if r.Generated {
				from = "a new key"
			}
			fmt.Fprintf(e.stdout, "%s key %s is current in its place: %s\n", cell(n.Kind), cell(n.Kid), from)
			switch {
			case r.Generated && n.Kind == "signing":
				fmt.Fprintln(e.stdout, "resource servers refuse access tokens signed with it until they fetch the JWKS again")
			case r.Generated && n.Kind == "set":
				fmt.Fprintln(e.stdout, "SSF receivers refuse SETs signed with it until they fetch the JWKS again")
			}
		}
		fmt.Fprintln(e.stdout)
		printKeyTable(e.stdout, r.Keys)
	}
	if _, err := awaitKeys(ctx, e, ids, r.Revision); err != nil {
		return fmt.Errorf("the key is revoked, but %w; those instances accept it until they do", err)
	}
	fmt.Fprintf(e.stderr, "tokenctl: every instance has loaded revision %d: none accepts key %s any more\n", r.Revision, cell(r.Revoked.Kid))
	return nil
}

// discoverQuiet is how long discovery waits for one more instance to answer.
const discoverQuiet = 500 * time.Millisecond

// discoverInstances returns the ids of the tokend instances serving this
// prefix, from their $SRV.INFO.tokens replies, once no more answered for
// discoverQuiet and at least want did. INFO rather
// than PING because it names the endpoints' subjects, which tells
// deployments with different prefixes on one NATS apart; and it counts
// instances too old to serve key administration, which must not be missed.
func discoverInstances(ctx context.Context, e *env, want int) (map[string]bool, error) {
	subject, err := micro.ControlSubject(micro.InfoVerb, "tokens", "")
	if err != nil {
		return nil, err
	}
	marker := e.c.Subject(client.SubjectKeys)
	ids := map[string]bool{}
	err = gather(ctx, e, subject, func(m *nats.Msg) bool {
		var info micro.Info
		if json.Unmarshal(m.Data, &info) == nil && slices.ContainsFunc(info.Endpoints, func(ep micro.EndpointInfo) bool {
			return ep.Subject == marker
		}) {
			ids[info.ID] = true
		}
		return false
	}, func() bool { return len(ids) >= max(want, 1) })
	switch {
	case err != nil && !errors.Is(err, context.DeadlineExceeded):
		return nil, err
	case len(ids) == 0:
		return nil, fmt.Errorf("no tokend instance with subject prefix %q answers %s within --timeout %v", e.prefix, subject, e.timeout)
	case len(ids) < want:
		return nil, fmt.Errorf("only %d of the %d expected tokend instances answer %s within --timeout %v", len(ids), want, subject, e.timeout)
	}
	return ids, nil
}

// keysReply is one instance's status, with the JSON as received.
type keysReply struct {
	api.KeysStatus
	raw []byte
}

// awaitKeys asks every instance for the keyset it has loaded, again every
// statusEvery, until each of ids (and any other instance that answers) has
// loaded revision minRev or a later one.
func awaitKeys(ctx context.Context, e *env, ids map[string]bool, minRev uint64) (map[string]keysReply, error) {
	got := map[string]keysReply{}
	behind := func() []string {
		var out []string
		for id := range ids {
			if r, ok := got[id]; !ok || r.Revision < minRev {
				out = append(out, id)
			}
		}
		slices.Sort(out)
		return out
	}
	subject := e.c.Subject(api.SubjectKeysStatus)
	var failure error
	err := gather(ctx, e, subject, func(m *nats.Msg) bool {
		if m.Header.Get(micro.ErrorCodeHeader) != "" {
			failure = fmt.Errorf("%s: %s", subject, m.Header.Get(micro.ErrorHeader))
			return false
		}
		var r api.KeysStatus
		if json.Unmarshal(m.Data, &r) != nil || r.InstanceID == "" {
			return false
		}
		ids[r.InstanceID] = true
		if r.Revision >= got[r.InstanceID].Revision {
			got[r.InstanceID] = keysReply{r, append([]byte(nil), m.Data...)}
		}
		return len(behind()) == 0
	}, nil)
	if err == nil {
		return got, nil
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		return nil, err
	}
	var lag []string
	for _, id := range behind() {
		if r, ok := got[id]; ok {
			lag = append(lag, fmt.Sprintf("%s (at revision %d)", id, r.Revision))
		} else {
			lag = append(lag, id+" (no answer: a tokend without key rotation?)")
		}
	}
	if failure != nil {
		lag = append(lag, failure.Error())
	}
	return nil, fmt.Errorf("not every instance loaded keyset revision %d within --timeout %v: %s", minRev, e.timeout, strings.Join(lag, ", "))
}

// statusEvery is how often awaitKeys asks again.
const statusEvery = 200 * time.Millisecond

// gather publishes {} to subject and passes every reply to done. With quiet
// nil it asks again every statusEvery until done returns true; else it
// asks once and stops when quiet returns true after discoverQuiet without
// a reply. It gives up after --timeout (context.DeadlineExceeded). Each
// request has its own reply subject: NATS lets a responder answer each
// request once.
func gather(ctx context.Context, e *env, subject string, done func(*nats.Msg) bool, quiet func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	inbox := e.nc.NewInbox()
	msgs := make(chan *nats.Msg, 256)
	sub, err := e.nc.ChanSubscribe(inbox+".*", msgs)
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	asked := 0
	ask := func() error {
		asked++
		return e.nc.PublishRequest(subject, fmt.Sprintf("%s.%d", inbox, asked), []byte("{}"))
	}
	if err := ask(); err != nil {
		return err
	}
	again := time.NewTicker(statusEvery)
	defer again.Stop()
	silence := time.NewTimer(discoverQuiet)
	defer silence.Stop()
	for {
		select {
		case m := <-msgs:
			if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
				return fmt.Errorf("%s: %w", subject, nats.ErrNoResponders)
			}
			if done(m) {
				return nil
			}
			silence.Reset(discoverQuiet)
		case <-silence.C:
			if quiet != nil && quiet() {
				return nil
			}
		case <-again.C:
			if quiet == nil {
				if err := ask(); err != nil {
					return err
				}
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// describeKeys names the keys in state, e.g. "mac key K1, signing key K2
// and set key K3".
func describeKeys(keys []api.KeyView, state string) string {
	var parts []string
	for _, k := range keys {
		if k.State == state {
			parts = append(parts, k.Kind+" key "+cell(k.Kid))
		}
	}
	switch len(parts) {
	case 0:
		return "no " + state + " key"
	case 1:
		return parts[0]
	}
	return strings.Join(parts[:len(parts)-1], ", ") + " and " + parts[len(parts)-1]
}

// describeInstances says which revision each instance has loaded.
func describeInstances(statuses map[string]keysReply) string {
	revs := map[uint64]int{}
	for _, s := range statuses {
		revs[s.Revision]++
	}
	if len(revs) == 1 {
		return fmt.Sprintf("%d instance(s), all on it", len(statuses))
	}
	var parts []string
	for _, id := range slices.Sorted(maps.Keys(statuses)) {
		parts = append(parts, fmt.Sprintf("%s on %d", cell(id), statuses[id].Revision))
	}
	return "instances " + strings.Join(parts, ", ")
}

func printKeyTable(w io.Writer, keys []api.KeyView) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tKID\tSTATE\tCREATED\tPROMOTED\tRETIRED\tEXPIRES")
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", cell(k.Kind), cell(k.Kid), cell(k.State),
			keyTime(k.CreatedAt), keyTime(k.PromotedAt), keyTime(k.RetiredAt), keyTime(k.ExpiresAt))
	}
	tw.Flush()
}

func keyTime(s string) string {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return tableTime(t)
	}
	return cell(s)
}
