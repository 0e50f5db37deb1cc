package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/signals"
)

var ssfCommand = &command{
	summary: "see and steer SSF streams; set up signed webhooks for SIEMs",
	synopsis: "streams list | streams show ID | streams pause ID --reason R | streams resume ID\n" +
		"  | streams disable ID --reason R | streams verify ID [--state S] | streams delete ID\n" +
		"  | webhooks add --url U [--event T]... [--client C]... [--save FILE] | webhooks list\n" +
		"  | webhooks remove ID | webhooks rotate-secret ID [--grace D] [--save FILE]",
	jsonHelp: "print the reply JSON as received; when webhooks add or rotate-secret makes a secret\n" +
		"(without --save), the reply gets \"secret\" as its first member",
	args: 3,
	help: `Security event streams (SSF) are created by their receivers, over HTTP
(docs/protocol.md, "Security events (SSF)"); operators see and steer them
here, over NATS (<prefix>.admin.ssf.*). Every instance follows
TOKENS_SSF_STREAMS, so a change reaches all of them within moments.

  ssf streams list              every stream, webhooks included, as a table
  ssf streams show ID           one stream: configuration, status, subjects removed
  ssf streams pause ID --reason R    hold its events (kept up to tokend's --retention)
  ssf streams resume ID         deliver again (held events too, once paused)
  ssf streams disable ID --reason R  stop it: events until it is resumed are dropped
  ssf streams verify ID         send it a verification event (--state S goes in it)
  ssf streams delete ID         delete it; its receiver can create another

Pause, resume and disable tell the receiver first: a stream-updated event
on its stream, with the reason (write it for them). Changes are logged
with --by.

Webhooks carry the same events as JSON, signed as Standard Webhooks has it
(webhook-id, webhook-timestamp, webhook-signature), for a SIEM that does
not speak SSF:

  ssf webhooks add --url U      POST the events to U (https)
      --event T                 only events of type T (repeatable): a URI,
                                its short name (session-revoked,
                                credential-compromise, key-revoked) or the
                                tokend event it comes from (family.revoked,
                                token.replay_detected, key.revoked, ...);
                                default: every type
      --client C                only the events of client C's sessions,
                                and keys revoked (repeatable); default:
                                every event
  ssf webhooks list             the webhooks
  ssf webhooks remove ID        delete one
  ssf webhooks rotate-secret ID a new secret; the old one signs too for
                                --grace (both signatures in one header)

The signing secret is made here (whsec_ and 32 random bytes in base64),
sent to tokend once, which stores it sealed under the deployment's MAC
key, and printed once; --save FILE writes it to FILE (mode 0600, a new
file) instead. Give it to the SIEM: it cannot be shown again, only
replaced with rotate-secret.

Needs the admin role (tokens.admin.ssf.*).`,
	setup: func(fs *flag.FlagSet) func(context.Context, *env) error {
		var eventTypes, clients stringList
		reason := fs.String("reason", "", "streams pause, disable: why, `R` (required; the receiver reads it)")
		state := fs.String("state", "", "streams verify: `S`, sent back in the verification event")
		endpoint := fs.String("url", "", "webhooks add: the SIEM's endpoint `U` (https)")
		fs.Var(&eventTypes, "event", "webhooks add: send only events of type `T` (repeatable; default: every type)")
		fs.Var(&clients, "client", "webhooks add: send only the events of client `C` (repeatable; default: every event)")
		description := fs.String("description", "", "webhooks add: what the webhook is for, `TEXT`")
		grace := fs.Duration("grace", domain.DefaultSecretGrace, "webhooks rotate-secret: the old secret signs too for `D` (default 24h; 0: it stops at once)")
		save := fs.String("save", "", "webhooks add, rotate-secret: write the new secret to `FILE` (mode 0600; it must not exist) instead of printing it")
		by := fs.String("by", operator(), "changes: who makes the change, `NAME` (logged; default: your login name)")
		return func(ctx context.Context, e *env) error {
			args := append(slices.Clone(e.args), "", "", "")
			group, sub, id := args[0], args[1], args[2]
			cmd := strings.TrimSpace(group + " " + sub)
			withID := map[string]bool{"streams show": true, "streams pause": true, "streams resume": true, "streams disable": true,
				"streams verify": true, "streams delete": true, "webhooks remove": true, "webhooks rotate-secret": true}
			known := map[string]bool{"streams list": true, "webhooks add": true, "webhooks list": true}
			changes := []string{"streams pause", "streams resume", "streams disable", "streams delete", "webhooks add", "webhooks remove", "webhooks rotate-secret"}
			flagsOf := map[string][]string{
				"reason": {"streams pause", "streams disable"}, "state": {"streams verify"}, "url": {"webhooks add"}, "event": {"webhooks add"},
				"client": {"webhooks add"}, "description": {"webhooks add"}, "grace": {"webhooks rotate-secret"},
				"save": {"webhooks add", "webhooks rotate-secret"}, "by": changes,
			}
			switch {
			case group != "streams" && group != "webhooks":
				return usagef("want streams or webhooks, then a subcommand")
			case !withID[cmd] && !known[cmd]:
				if group == "streams" {
					return usagef("unknown subcommand %q: want streams list, show, pause, resume, disable, verify or delete", sub)
				}
				return usagef("unknown subcommand %q: want webhooks add, list, remove or rotate-secret", sub)
			case withID[cmd] && id == "":
				return usagef("%s needs a stream id", cmd)
			case !withID[cmd] && id != "":
				return usagef("%s takes no stream id", cmd)
			case (cmd == "streams pause" || cmd == "streams disable") && *reason == "":
				return usagef("--reason is required: why the stream is %sd, for its receiver", sub)
			case cmd == "webhooks add" && *endpoint == "":
				return usagef("--url is required: where the events are sent")
			case slices.Contains(changes, cmd) && *by == "":
				return usagef("--by is required (no login name found): who makes this change")
			case isSet(fs, "save") && *save == "":
				return usagef("--save needs a file name")
			case isSet(fs, "save") && exists(*save):
				return usagef("--save: %s exists; a saved secret is never overwritten: remove it or name another file", *save)
			}
			for name, cmds := range flagsOf {
				if isSet(fs, name) && !slices.Contains(cmds, cmd) {
					return usagef("--%s goes with %s", name, strings.Join(cmds, ", "))
				}
			}
			if _, err := e.client(); err != nil {
				return err
			}
			switch cmd {
			case "streams list":
				return listSSF(ctx, e, api.SubjectSSFStreamsList, "no SSF stream exists")
			case "webhooks list":
				return listSSF(ctx, e, api.SubjectSSFWebhooksList, "no webhook is set up")
			case "streams show":
				return sendSSF(ctx, e, api.SubjectSSFStreamsGet, api.SSFStreamRequest{StreamID: id}, "")
			case "streams pause":
				return sendSSF(ctx, e, api.SubjectSSFStreamsPause, api.SSFStreamRequest{StreamID: id, Reason: *reason, By: *by}, "paused")
			case "streams resume":
				return sendSSF(ctx, e, api.SubjectSSFStreamsResume, api.SSFStreamRequest{StreamID: id, By: *by}, "resumed")
			case "streams disable":
				return sendSSF(ctx, e, api.SubjectSSFStreamsDisable, api.SSFStreamRequest{StreamID: id, Reason: *reason, By: *by}, "disabled")
			case "streams verify":
				return verifySSF(ctx, e, id, *state)
			case "streams delete", "webhooks remove":
				subject := api.SubjectSSFStreamsDelete
				if group == "webhooks" {
					subject = api.SubjectSSFWebhooksRemove
				}
				return deleteSSF(ctx, e, subject, id, *by)
			case "webhooks add":
				secret := newWebhookSecret()
				req := api.SSFWebhookAddRequest{EndpointURL: *endpoint, Events: eventTypes, Clients: clients, Secret: secret, Description: *description, By: *by}
				return sendWithWebhookSecret(ctx, e, api.SubjectSSFWebhooksAdd, req, secret, *save, "added webhook")
			default: // webhooks rotate-secret
				secret := newWebhookSecret()
				g := grace.String()
				req := api.SSFWebhookRotateRequest{StreamID: id, Secret: secret, Grace: &g, By: *by}
				return sendWithWebhookSecret(ctx, e, api.SubjectSSFWebhooksRotateSecret, req, secret, *save, "gave a new secret to webhook")
			}
		}
	},
}

// newWebhookSecret returns a Standard Webhooks secret: whsec_ and the
// base64 of 256 random bits.
func newWebhookSecret() string {
	var b [32]byte
	rand.Read(b[:]) // never fails (crypto/rand)
	return signals.WebhookSecretPrefix + base64.StdEncoding.EncodeToString(b[:])
}

func listSSF(ctx context.Context, e *env, subject, none string) error {
	var raw json.RawMessage
	if err := e.c.Request(ctx, subject, struct{}{}, &raw); err != nil {
		return err
	}
	if e.json {
		printRaw(e.stdout, raw)
		return nil
	}
	var list api.SSFStreamList
	if err := json.Unmarshal(raw, &list); err != nil {
		return fmt.Errorf("decode reply: %w", err)
	}
	if len(list.Streams) == 0 {
		fmt.Fprintln(e.stdout, none)
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STREAM_ID\tOWNER\tDELIVERY\tSTATUS\tENDPOINT\tEVENTS\tUPDATED\tREASON")
	for _, st := range list.Streams {
		events := "all"
		if st.EventsRequested != nil {
			events = fmt.Sprint(len(st.EventsDelivered))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", cell(st.StreamID), ownerCell(st), methodName(st.DeliveryMethod), statusCell(st),
			cell(st.EndpointURL), events, keyTime(st.UpdatedAt), cell(st.Reason))
	}
	return tw.Flush()
}

// ownerCell names who owns a stream: its receiver, or the operator who
// set up a webhook.
func ownerCell(st api.SSFStreamView) string {
	if st.Receiver != "" {
		return cell(st.Receiver)
	}
	return "operator " + cell(st.CreatedBy)
}

func statusCell(st api.SSFStreamView) string {
	if st.SecretLost {
		return cell(st.Status) + " (secret lost)"
	}
	return cell(st.Status)
}

// methodName shows a delivery method by its common name.
func methodName(method string) string {
	switch method {
	case signals.DeliveryPush:
		return "push"
	case signals.DeliveryPoll:
		return "poll"
	case signals.DeliveryWebhook:
		return "webhook"
	}
	return cell(method)
}

// sendSSF sends a request answered with a stream and prints it; done, if
// set, says what happened to it.
func sendSSF(ctx context.Context, e *env, subject string, req any, done string) error {
	return show(ctx, e, subject, req, func(v api.SSFStreamView) error {
		if done != "" {
			fmt.Fprintf(e.stdout, "%s stream %s (revision %d); its receiver is told by a stream-updated event\n\n", done, cell(v.StreamID), v.Revision)
		}
		printSSFStream(e.stdout, v)
		return nil
	})
}

func verifySSF(ctx context.Context, e *env, id, state string) error {
	return show(ctx, e, api.SubjectSSFStreamsVerify, api.SSFVerifyRequest{StreamID: id, State: state}, func(r api.SSFVerifyReply) error {
		fmt.Fprintf(e.stdout, "verification event %s stored for stream %s (seq %d); its SET carries txn %s\n", cell(r.EventID), cell(r.StreamID), r.Seq, cell(r.EventID))
		return nil
	})
}

func deleteSSF(ctx context.Context, e *env, subject, id, by string) error {
	var raw json.RawMessage
	if err := e.c.Request(ctx, subject, api.SSFStreamRequest{StreamID: id, By: by}, &raw); err != nil {
		return err
	}
	if e.json {
		printRaw(e.stdout, raw)
		return nil
	}
	fmt.Fprintf(e.stdout, "deleted stream %s; its undelivered events are dropped\n", cell(id))
	return nil
}

// sendWithWebhookSecret sends a request carrying a new webhook secret and
// prints the webhook; the secret goes to the file save, or else is
// printed once. The file is written before the request and linked after
// it, as clients add --save does.
func sendWithWebhookSecret(ctx context.Context, e *env, subject string, req any, secret, save, done string) error {
	raw, shown, saveErr, err := requestWithSecret(ctx, e, subject, req, secret, save)
	if err != nil {
		return err
	}
	var v api.SSFStreamView
	if err := json.Unmarshal(raw, &v); err != nil {
		if shown {
			fmt.Fprintf(e.stdout, "secret: %s\n", secret)
		}
		printRaw(e.stdout, raw)
		return fmt.Errorf("decode reply: %w", err)
	}
	if e.json {
		if shown {
			raw = withSecretMember(raw, "secret", secret)
		}
		printRaw(e.stdout, raw)
	} else {
		fmt.Fprintf(e.stdout, "%s %s (revision %d)\n", done, cell(v.StreamID), v.Revision)
		if shown {
			fmt.Fprintf(e.stdout, "secret: %s\n  shown once: tokend keeps it sealed and never shows it. Give it to the SIEM now.\n", secret)
		} else {
			fmt.Fprintf(e.stdout, "secret: written to %s\n", save)
		}
		fmt.Fprintln(e.stdout)
		printSSFStream(e.stdout, v)
	}
	if saveErr != nil {
		return fmt.Errorf("--save: %w (the secret is printed above instead)", saveErr)
	}
	return nil
}

// printSSFStream shows a stream as aligned lines.
func printSSFStream(w io.Writer, v api.SSFStreamView) {
	rows := [][2]string{{"stream_id", cell(v.StreamID)}, {"revision", fmt.Sprint(v.Revision)}}
	if v.Receiver != "" {
		rows = append(rows, [2]string{"receiver", cell(v.Receiver)})
	} else {
		rows = append(rows, [2]string{"created_by", cell(v.CreatedBy)})
	}
	status := cell(v.Status)
	if v.Reason != "" {
		status += ": " + cell(v.Reason)
	}
	rows = append(rows, [][2]string{{"status", status}, {"delivery", methodName(v.DeliveryMethod)}}...)
	if v.EndpointURL != "" {
		rows = append(rows, [2]string{"endpoint_url", cell(v.EndpointURL)})
	}
	if v.DeliveryMethod == signals.DeliveryPush {
		auth := "none"
		if v.AuthorizationHeader {
			auth = "set (sealed; never shown)"
		}
		rows = append(rows, [2]string{"authorization", auth})
	}
	if v.SecretLost {
		rows = append(rows, [2]string{"secret", "LOST with a revoked MAC key: the receiver must send its delivery again (webhooks: rotate-secret)"})
	}
	for i, s := range v.WebhookSecrets {
		what := "made " + keyTime(s.CreatedAt)
		if s.ExpiresAt != "" {
			what += ", signs until " + keyTime(s.ExpiresAt)
		}
		rows = append(rows, [2]string{fmt.Sprintf("secret %d", i+1), cell(s.SecretRef) + ", " + what})
	}
	if v.DeliveryMethod == signals.DeliveryWebhook {
		rows = append(rows, [2]string{"clients", listCellOr(v.Clients, "every client")})
	}
	if p := v.Pending; p != nil {
		pending := "nothing: the receiver has taken every event"
		if p.Events > 0 {
			pending = fmt.Sprintf("%d events, the oldest %s old", p.Events, (time.Duration(p.OldestSeconds * float64(time.Second))).Round(time.Second))
		}
		rows = append(rows, [2]string{"pending", pending})
	}
	requested := "every type"
	if v.EventsRequested != nil {
		requested = listCell(v.EventsRequested)
	}
	rows = append(rows, [][2]string{{"aud", listCell(v.Audience)}, {"events_requested", requested},
		{"events_delivered", listCell(v.EventsDelivered)}}...)
	if v.Description != "" {
		rows = append(rows, [2]string{"description", cell(v.Description)})
	}
	subjects := fmt.Sprintf("%d removed", v.ExcludedSubjectsCount)
	for _, s := range v.ExcludedSubjects {
		data, _ := json.Marshal(s)
		subjects += "\n  " + cell(string(data))
	}
	rows = append(rows, [][2]string{{"subjects", subjects}, {"created", keyTime(v.CreatedAt)}, {"updated", keyTime(v.UpdatedAt)}}...)
	printKV(w, rows)
}

// listCellOr is listCell with what an empty list means.
func listCellOr(items []string, empty string) string {
	if len(items) == 0 {
		return empty
	}
	return listCell(items)
}
