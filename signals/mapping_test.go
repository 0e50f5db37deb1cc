package signals

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
)

const issuer = "https://tokend.example"

var at = time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)

func envelope(typ domain.EventType, reason string) events.Envelope {
	return events.Envelope{ID: "evt-1", Type: string(typ), Time: at, FamilyID: "fam-1", Subject: "user-42", ClientID: "web-app",
		Generation: 5, Reason: reason, Data: events.Data{TokenHash: "9f2c0d1e", Family: events.Snapshot{Status: domain.StatusActive, Generation: 5}}}
}

func sessionOf(subject, family, client string) Subject {
	user, session, app := IssSub(issuer, subject), Opaque(family), Opaque(client)
	return Subject{Format: FormatComplex, User: &user, Session: &session, Application: &app}
}

func TestMapFamilyEvents(t *testing.T) {
	m := Mapper{Issuer: issuer}
	replay := envelope(domain.ReplayDetected, "")
	replay.PresentedGeneration = 3
	mismatch := envelope(domain.RefreshRejected, domain.ReasonClientMismatch)
	mismatch.PresentedBy, mismatch.PresentedGeneration = "evil-app", 5
	retired := envelope(domain.RefreshRejected, domain.ReasonRetiredKey)
	retired.PresentedGeneration = 9
	const boundKey, thiefKey = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I", "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
	keyMismatch := envelope(domain.KeyMismatch, "")
	keyMismatch.PresentedGeneration, keyMismatch.DPoPJKT, keyMismatch.PresentedJKT = 4, boundKey, thiefKey
	revokedAfterMismatch := envelope(domain.FamilyRevoked, domain.ReasonDPoPKeyMismatch)
	revokedAfterMismatch.DPoPJKT = boundKey
	proofMissing := envelope(domain.RefreshRejected, domain.ReasonDPoPProofMissing)
	proofMissing.DPoPJKT = boundKey
	session := sessionOf("user-42", "fam-1", "web-app")
	own := Visibility{Client: "web-app"}

	tests := []struct {
		name          string
		env           events.Envelope
		wantType      string
		wantInitiator string // session revoked
		wantReason    string // tokend_reason
		wantGens      [2]uint64
	}{
		{name: "replay revokes: policy", env: envelope(domain.FamilyRevoked, domain.ReasonReplayDetected),
			wantType: TypeSessionRevoked, wantInitiator: InitiatedByPolicy, wantReason: domain.ReasonReplayDetected},
		{name: "logout or RFC 7009 revocation: user", env: envelope(domain.FamilyRevoked, domain.ReasonRevoked),
			wantType: TypeSessionRevoked, wantInitiator: InitiatedByUser, wantReason: domain.ReasonRevoked},
		{name: "a revoke with a reason: admin", env: envelope(domain.FamilyRevoked, "user_disabled"),
			wantType: TypeSessionRevoked, wantInitiator: InitiatedByAdmin, wantReason: "user_disabled"},
		{name: "replay detected: likely stolen", env: replay,
			wantType: TypeCredentialCompromise, wantReason: domain.ReasonReplayDetected, wantGens: [2]uint64{3, 5}},
		{name: "presented by another client", env: mismatch,
			wantType: TypeCredentialCompromise, wantReason: domain.ReasonClientMismatch, wantGens: [2]uint64{5, 5}},
		{name: "forged with a retired key", env: retired,
			wantType: TypeCredentialCompromise, wantReason: domain.ReasonRetiredKey, wantGens: [2]uint64{9, 5}},
		{name: "proof by another DPoP key: likely stolen", env: keyMismatch,
			wantType: TypeCredentialCompromise, wantReason: domain.ReasonDPoPKeyMismatch, wantGens: [2]uint64{4, 5}},
		{name: "key mismatch revokes: policy", env: revokedAfterMismatch,
			wantType: TypeSessionRevoked, wantInitiator: InitiatedByPolicy, wantReason: domain.ReasonDPoPKeyMismatch},
		{name: "a lost rotation ends the family: policy", env: envelope(domain.FamilyRevoked, domain.ReasonLostRotation),
			wantType: TypeSessionRevoked, wantInitiator: InitiatedByPolicy, wantReason: domain.ReasonLostRotation},
		// The client's own slip as likely as theft: refused, not a signal.
		{name: "refused: no DPoP proof", env: proofMissing},
		{name: "refused: a lost rotation", env: envelope(domain.RefreshRejected, domain.ReasonLostRotation)},
		{name: "issued", env: envelope(domain.TokenIssued, "")},
		{name: "rotated", env: envelope(domain.TokenRotated, "")},
		{name: "reused", env: envelope(domain.TokenReused, "")},
		{name: "archived", env: envelope(domain.FamilyArchived, "")},
		{name: "refused: expired", env: envelope(domain.RefreshRejected, domain.ReasonExpired)},
		{name: "refused: revoked family", env: envelope(domain.RefreshRejected, domain.ReasonFamilyRevoked)},
		{name: "refused: unknown token", env: envelope(domain.RefreshRejected, domain.ReasonUnknownToken)},
		{name: "refused: scope", env: envelope(domain.RefreshRejected, domain.ReasonInvalidScope)},
		{name: "refused: audience", env: envelope(domain.RefreshRejected, domain.ReasonInvalidTarget)},
	}
	for _, tc := range tests {
		sigs := m.Family(tc.env)
		if tc.wantType == "" {
			if len(sigs) != 0 {
				t.Errorf("%s: %d signals, want none", tc.name, len(sigs))
			}
			continue
		}
		if len(sigs) != 1 {
			t.Fatalf("%s: %d signals, want 1", tc.name, len(sigs))
		}
		sig := sigs[0]
		if sig.Type != tc.wantType || !sig.Subject.Equal(session) || sig.Visibility != own || sig.Txn != "evt-1" || !sig.Time.Equal(at) {
			t.Errorf("%s: %+v", tc.name, sig)
		}
		switch ev := sig.Event.(type) {
		case SessionRevoked:
			if ev.InitiatingEntity != tc.wantInitiator || ev.TokendReason != tc.wantReason || ev.ReasonAdmin["en"] == "" ||
				ev.EventTimestamp != at.Unix() || ev.RevokedFamilies != nil {
				t.Errorf("%s: %+v", tc.name, ev)
			}
		case CredentialCompromise:
			if ev.CredentialType != CredentialTypeRefreshToken || ev.TokendReason != tc.wantReason || ev.ReasonAdmin["en"] == "" ||
				[2]uint64{ev.PresentedGeneration, ev.CurrentGeneration} != tc.wantGens || ev.EventTimestamp != at.Unix() {
				t.Errorf("%s: %+v", tc.name, ev)
			}
		default:
			t.Errorf("%s: event %T", tc.name, sig.Event)
		}
		// Never a token, nor its hash, nor another client's id: a
		// receiver joins the SET to tokend's audit by txn.
		data, _ := json.Marshal(sig.Event)
		sub, _ := json.Marshal(sig.Subject)
		for _, leak := range []string{"9f2c0d1e", "evil-app", "rt1."} {
			if strings.Contains(string(data)+string(sub), leak) {
				t.Errorf("%s: a signal holds %q: %s %s", tc.name, leak, sub, data)
			}
		}
	}
}

func TestMapDeploymentEvents(t *testing.T) {
	m := Mapper{Issuer: issuer}
	stream := "0123456789abcdef0123456789abcdef"
	user, app := IssSub(issuer, "user-42"), Opaque("web-app")
	two, zero := 2, 0
	tests := []struct {
		ev       events.DeploymentEvent
		wantType string
		wantSub  Subject
		wantVis  Visibility
		wantEv   any
	}{
		{events.SubjectRevokedEvent("user-42", "user_disabled", 2, 40, at), TypeSessionRevoked,
			Subject{Format: FormatComplex, User: &user}, Visibility{},
			SessionRevoked{InitiatingEntity: InitiatedByAdmin, ReasonAdmin: en("All sessions of this user revoked: user_disabled"),
				ReasonUser: en(revokedForUser("user_disabled")), EventTimestamp: at.Unix(), TokendReason: "user_disabled", RevokedFamilies: &two}},
		{events.SubjectRevokedEvent("user-42", domain.ReasonReplayDetected, 0, 40, at), TypeSessionRevoked,
			Subject{Format: FormatComplex, User: &user}, Visibility{},
			SessionRevoked{InitiatingEntity: InitiatedByPolicy, ReasonAdmin: en("All sessions of this user revoked: replay_detected"),
				ReasonUser: en(revokedForUser(domain.ReasonReplayDetected)), EventTimestamp: at.Unix(), TokendReason: domain.ReasonReplayDetected, RevokedFamilies: &zero}},
		{events.ClientRevokedEvent("web-app", domain.ReasonRevoked, 2, 41, at), TypeSessionRevoked,
			Subject{Format: FormatComplex, Application: &app}, Visibility{Client: "web-app"},
			SessionRevoked{InitiatingEntity: InitiatedByAdmin, ReasonAdmin: en("All sessions of this client revoked: revoked"),
				ReasonUser: en(revokedForUser(domain.ReasonRevoked)), EventTimestamp: at.Unix(), TokendReason: domain.ReasonRevoked, RevokedFamilies: &two}},
		{events.KeyRevokedEvent("k-1", "signing", "seed leaked", "alice", 7, at), TypeKeyRevoked,
			Opaque("k-1"), Visibility{Deployment: true},
			KeyRevoked{Kid: "k-1", KeyUse: "signing", InitiatingEntity: InitiatedByAdmin,
				ReasonAdmin: en("Key revoked: seed leaked. Stop trusting anything it signed or authenticated."), EventTimestamp: at.Unix()}},
		{events.VerificationEvent(stream, "st-1", at), TypeVerification, Opaque(stream), Visibility{Stream: stream}, Verification{State: "st-1"}},
		{events.StreamUpdatedEvent(stream, "paused", "maintenance", 3, at), TypeStreamUpdated, Opaque(stream), Visibility{Stream: stream},
			StreamUpdated{Status: StatusPaused, Reason: "maintenance"}},
	}
	for _, tc := range tests {
		sigs := m.Deployment(tc.ev, false)
		if len(sigs) != 1 {
			t.Fatalf("%s: %d signals", tc.ev.Type, len(sigs))
		}
		sig := sigs[0]
		if sig.Type != tc.wantType || !sig.Subject.Equal(tc.wantSub) || sig.Visibility != tc.wantVis || sig.Txn != tc.ev.ID ||
			!sig.Time.Equal(at) || !reflect.DeepEqual(sig.Event, tc.wantEv) {
			t.Errorf("%s:\n got %+v\nwant type %s subject %+v visibility %+v event %+v", tc.ev.Type, sig, tc.wantType, tc.wantSub, tc.wantVis, tc.wantEv)
		}
		if data, _ := json.Marshal(sig.Event); strings.Contains(string(data), "alice") {
			t.Errorf("%s: the operator's name goes to receivers: %s", tc.ev.Type, data)
		}
	}
}

// TestMapMessage: a message of the TOKENS stream maps by its subject;
// anything else on tokend's subjects is refused as foreign.
func TestMapMessage(t *testing.T) {
	m := Mapper{Issuer: issuer}
	subjects := events.Subjects{Prefix: "tokens"}
	fam, _ := events.Encode(envelope(domain.FamilyRevoked, domain.ReasonRevoked))
	if sigs, err := m.Message(t.Context(), subjects, "tokens.evt.fam-1", fam); err != nil || len(sigs) != 1 || sigs[0].Type != TypeSessionRevoked {
		t.Fatalf("a family event: %+v, %v", sigs, err)
	}
	ops, _ := json.Marshal(events.KeyRevokedEvent("k-1", "mac", "r", "b", 1, at))
	if sigs, err := m.Message(t.Context(), subjects, "tokens.ops.key_revoked", ops); err != nil || len(sigs) != 1 || sigs[0].Type != TypeKeyRevoked {
		t.Fatalf("a deployment event: %+v, %v", sigs, err)
	}
	stream := "0123456789abcdef0123456789abcdef"
	ver, _ := json.Marshal(events.VerificationEvent(stream, "", at))
	if sigs, err := m.Message(t.Context(), subjects, "tokens.ssf."+stream, ver); err != nil || len(sigs) != 1 || sigs[0].Visibility.Stream != stream {
		t.Fatalf("a stream's event: %+v, %v", sigs, err)
	}
	for _, tc := range []struct {
		subject string
		data    []byte
	}{
		{"tokens.evt.other-family", fam},
		{"tokens.ops.client_revoked", ops},
		{"tokens.ssf.ffffffffffffffffffffffffffffffff", ver},
		{"tokens.cmd.issue", ops},
		{"tokens.ops.key_revoked", []byte(`{"refresh_token":"rt1.x"}`)},
	} {
		if _, err := m.Message(t.Context(), subjects, tc.subject, tc.data); !errors.Is(err, events.ErrMalformedEvent) {
			t.Errorf("%s: %v", tc.subject, err)
		}
	}
}

// The types Message skips undecoded are those Family maps to nothing,
// whatever the reason; and a message of a mapped type is decoded.
func TestMessageSkipsOnlyUnmappedTypes(t *testing.T) {
	m := Mapper{Issuer: "https://tokend.example"}
	subjects := events.Subjects{Prefix: "tokens"}
	reasons := []string{"", domain.ReasonReplayDetected, domain.ReasonRevoked, domain.ReasonClientMismatch, domain.ReasonExpired,
		domain.ReasonFamilyRevoked, domain.ReasonInvalidScope, domain.ReasonInvalidTarget, domain.ReasonUnknownToken, domain.ReasonRetiredKey,
		domain.ReasonDPoPKeyMismatch, domain.ReasonDPoPProofMissing, domain.ReasonLostRotation}
	for _, typ := range events.Types {
		mapped := false
		for _, reason := range reasons {
			env := events.Envelope{ID: "e1", Type: typ, Time: time.Now().UTC(), FamilyID: "fam", Subject: "u", ClientID: "c",
				Generation: 2, Reason: reason, Data: events.Data{TokenHash: "9f", Family: events.Snapshot{Status: domain.StatusActive, Generation: 2}}}
			if len(m.Family(env)) == 0 {
				continue
			}
			mapped = true
			data, err := events.Encode(env)
			if err != nil {
				t.Fatal(err)
			}
			if sigs, err := m.Message(t.Context(), subjects, subjects.Family("fam"), data); err != nil || len(sigs) != 1 {
				t.Errorf("%s (%s): %d signals from the message, %v", typ, reason, len(sigs), err)
			}
		}
		if mapped != familyEventSignals(domain.EventType(typ)) {
			t.Errorf("%s: maps to a signal %v, familyEventSignals %v", typ, mapped, familyEventSignals(domain.EventType(typ)))
		}
	}
}
