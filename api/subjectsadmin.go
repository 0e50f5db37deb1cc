package api

import (
	"cmp"
	"context"

	"github.com/nats-io/nats.go/micro"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/pii"
	"github.com/tokend/tokend/registry"
)

// SubjectSubjectsErase is where a data subject's erasure is asked
// (<prefix>.admin.subjects.erase; tokenctl subjects erase).
const SubjectSubjectsErase = "admin.subjects.erase"

// SubjectEraseRequest asks to erase a subject's personal data, named by
// exactly one of Subject and Pseudonym.
type SubjectEraseRequest struct {
	Subject string `json:"subject,omitempty"`
	// Pseudonym names a subject already erased, whose erasure is made
	// again: after TOKENS_SUBJECT_KEYS was restored from a backup older
	// than the erasure (docs/operations.md), from its subject.erased
	// event.
	Pseudonym string `json:"pseudonym,omitempty"`
	// Reason is recorded with the erasure (subject.erased): a request
	// reference, say, never personal data.
	Reason string `json:"reason"`
	// By is who asked; the NATS user if empty.
	By string `json:"by,omitempty"`
}

// SubjectErased answers an erasure.
type SubjectErased struct {
	// Pseudonym names the subject in the stream and the audit trail from
	// now on: receivers of security events see it in the account-purged
	// event.
	Pseudonym string `json:"pseudonym"`
	// RevokedFamilies counts the families this call revoked.
	RevokedFamilies int `json:"revoked_families"`
	// Seq is, as a revoke's reply, the stream position by which every
	// family of the subject is revoked: a query with min_seq=seq sees it.
	Seq uint64 `json:"seq"`
}

// EraseTimeout bounds an erasure, which revokes every family of the
// subject first (as a revoke by subject).
const EraseTimeout = revokeTimeout

// addSubjectsAdmin registers the erasure endpoint on svc.
func (s *Service) addSubjectsAdmin(svc micro.Service, prefix string) error {
	return s.addAdminEndpoints(svc, prefix, EraseTimeout, []adminEndpoint{
		{"subjects_erase", SubjectSubjectsErase, s.eraseSubject, nil},
	})
}

// eraseSubject erases a subject's personal data, in an order that a crash
// at any point leaves retryable and never leaves a family alive whose
// subject's key is gone:
//  1. issuing for the subject is held back on every instance;
//  2. every family of the subject is revoked (as revoke by subject);
//  3. the subject's data key is destroyed (pii.Store.Erase): its personal
//     fields become unreadable in every event and read model row, backups
//     included;
//  4. subject.erased is recorded, naming the subject by its pseudonym.
//
// Erasing it again revokes nothing more, finds no key and records the
// same event, which the stream drops as a duplicate within its window.
func (s *Service) eraseSubject(ctx context.Context, data []byte, who registry.Actor) (any, error) {
	var in SubjectEraseRequest
	if err := Decode(data, &in); err != nil {
		return nil, err
	}
	switch {
	case in.Subject != "" && in.Pseudonym != "":
		return nil, domain.Errorf(domain.EInvalidRequest, "give subject or pseudonym, not both")
	case in.Pseudonym != "" && !pii.IsPseudonym(in.Pseudonym):
		return nil, domain.Errorf(domain.EInvalidRequest, "pseudonym: not a pseudonym (p: and 22 characters, as subject.erased names it)")
	case in.Pseudonym == "":
		if err := domain.ValidateName("subject", in.Subject); err != nil {
			return nil, err
		}
	}
	if err := domain.ValidateName("reason", in.Reason); err != nil {
		return nil, err
	}
	by := cmp.Or(in.By, who.NATSUser)
	if err := domain.ValidateName("by", by); err != nil {
		return nil, domain.Errorf(domain.EInvalidRequest, "by is required: name who asks for the erasure")
	}
	if s.Personal == nil || s.Outbox == nil {
		return nil, domain.Errorf(domain.EInvalidRequest,
			"personal data protection is off (tokend --pii-key-file): subjects' data is stored in clear and cannot be erased; see docs/operations.md")
	}
	// A pseudonym works as a subject: the read model lists a protected
	// subject's families under it, and its marker is named after it.
	subject := cmp.Or(in.Subject, in.Pseudonym)
	end, err := s.beginRevoking(ctx, subject, "")
	if err != nil {
		return nil, err
	}
	defer end()
	revoked, pos, err := s.revokeAllMarked(ctx, subject, "", wire.RevokeRequest{Reason: domain.ReasonSubjectErased})
	if err != nil {
		return nil, err
	}
	pseudonym := cmp.Or(in.Pseudonym, s.Personal.Pseudonym(in.Subject))
	if err := s.Personal.Erase(ctx, pseudonym); err != nil {
		s.Log.Error("erasing a subject's data key", "pseudonym", pseudonym, "err", err)
		return nil, &domain.Error{Code: domain.EUnavailable, Message: "the families are revoked, the key could not be destroyed: retry", RetryAfterMs: 500}
	}
	recorded, err := s.Outbox.AppendDeployment(ctx, events.SubjectErasedEvent(pseudonym, in.Reason, by, revoked, s.Now()))
	if err != nil {
		s.Log.Error("recording a subject's erasure", "pseudonym", pseudonym, "err", err)
		return nil, &domain.Error{Code: domain.EUnavailable, Message: "the data is erased, the erasure could not be recorded: retry", RetryAfterMs: 500}
	}
	s.Log.Warn("subject erased", "pseudonym", pseudonym, "reason", in.Reason, "by", by, "nats_user", who.NATSUser,
		"revoked_families", revoked, "seq", recorded)
	s.Metrics.SubjectErased()
	return SubjectErased{Pseudonym: pseudonym, RevokedFamilies: revoked, Seq: pos}, nil
}
