package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/tokend/tokend/api"
)

var subjectsCommand = &command{
	summary:  "erase a data subject's personal data (crypto-shredding)",
	synopsis: "erase (SUBJECT | --pseudonym P) --reason R [--by NAME]",
	jsonHelp: "print the erase reply as received",
	help: `subjects erase SUBJECT forgets a person (GDPR Art. 17), on a deployment
that protects personal data (tokend --pii-key-file), through
<prefix>.admin.subjects.erase:
  1. issuing for SUBJECT is held back on every instance;
  2. every family of SUBJECT is revoked (reason subject_erased);
  3. SUBJECT's data key is destroyed: its identifier, IP addresses, user
     agents and context become unreadable in every event, read model and
     backup of the stream;
  4. subject.erased is recorded, naming SUBJECT only by its pseudonym, and
     sent to SSF receivers as a RISC account-purged event.
The audit trail keeps its shape: the events stay, with subject the
pseudonym and "erased": true. If it fails or is interrupted, run it again:
each step is safe to repeat, and the key is destroyed only once every
family is revoked. --reason (a request reference, say; never personal
data) is required and recorded with --by. Needs the admin role. See
docs/operations.md, "A data subject asks to be forgotten".

--pseudonym P, instead of SUBJECT, erases again a subject known only by
the pseudonym its subject.erased event names: after the key bucket was
restored from a backup older than the erasure.`,
	args: 2,
	long: true,
	setup: func(fs *flag.FlagSet) func(context.Context, *env) error {
		reason := fs.String("reason", "", "erase: why, `R` (required; recorded: a request reference, never personal data)")
		by := fs.String("by", operator(), "erase: who asks, `NAME` (recorded; default: your login name)")
		pseudonym := fs.String("pseudonym", "", "erase: the subject's pseudonym `P`, from its subject.erased event, in place of SUBJECT")
		return func(ctx context.Context, e *env) error {
			subject := ""
			if len(e.args) > 1 {
				subject = e.args[1]
			}
			switch {
			case len(e.args) == 0:
				return usagef("want: subjects erase SUBJECT --reason R")
			case e.args[0] != "erase":
				return usagef("unknown subcommand %q: want erase", e.args[0])
			case subject == "" && *pseudonym == "":
				return usagef("erase needs the subject (or --pseudonym)")
			case subject != "" && *pseudonym != "":
				return usagef("give SUBJECT or --pseudonym, not both")
			case *reason == "":
				return usagef("--reason is required: why the subject is erased")
			case *by == "":
				return usagef("--by is required (no login name found): who asks for the erasure")
			}
			if _, err := e.client(); err != nil {
				return err
			}
			// tokend may take up to api.EraseTimeout to revoke every family.
			ctx, cancel := context.WithTimeout(ctx, max(e.timeout, api.EraseTimeout+5*time.Second))
			defer cancel()
			req := api.SubjectEraseRequest{Subject: subject, Pseudonym: *pseudonym, Reason: *reason, By: *by}
			err := show(ctx, e, api.SubjectSubjectsErase, req, func(r api.SubjectErased) error {
				_, err := fmt.Fprintf(e.stdout, "erased: %d families revoked (seq %d); the subject is %s from now on\n",
					r.RevokedFamilies, r.Seq, cell(r.Pseudonym))
				return err
			})
			if err != nil {
				return fmt.Errorf("erase: %w", err)
			}
			return nil
		}
	},
}
