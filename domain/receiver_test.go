package domain

import (
	"slices"
	"testing"
)

func TestReceiverMaySee(t *testing.T) {
	tests := []struct {
		role       ReceiverRole
		owner      string
		may        bool
		deployment bool
	}{
		{ReceiverNone, "siem", false, false},
		{ReceiverNone, "web-app", false, false},
		{ReceiverOwn, "siem", true, false},
		{ReceiverOwn, "web-app", false, false},
		{ReceiverOwn, "", false, false},
		{ReceiverAll, "siem", true, true},
		{ReceiverAll, "web-app", true, true},
		{ReceiverAll, "", true, true},
	}
	for _, tc := range tests {
		c := Client{ID: "siem", Type: ClientConfidential, Receiver: tc.role}
		if got := c.MaySee(tc.owner); got != tc.may {
			t.Errorf("%q receiver, event of client %q: may see %v, want %v", tc.role, tc.owner, got, tc.may)
		}
		if got := c.MaySeeDeployment(); got != tc.deployment {
			t.Errorf("%q receiver: may see deployment events %v, want %v", tc.role, got, tc.deployment)
		}
		if c.IsReceiver() != (tc.role != ReceiverNone) {
			t.Errorf("%q: IsReceiver %v", tc.role, c.IsReceiver())
		}
	}
}

func TestReceiverRegistration(t *testing.T) {
	tests := []struct {
		name    string
		typ     ClientType
		role    ReceiverRole
		thenErr string // a word of the invalid_request message; "" for success
	}{
		{"not a receiver", ClientConfidential, ReceiverNone, ""},
		{"own", ClientConfidential, ReceiverOwn, ""},
		{"all", ClientConfidential, ReceiverAll, ""},
		{"unknown role", ClientConfidential, "everything", "ssf_receiver"},
		{"public receiver", ClientPublic, ReceiverOwn, "ssf_receiver"},
		{"public, not a receiver", ClientPublic, ReceiverNone, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := confidential()
			c.Type, c.Receiver = tc.typ, tc.role
			hash := hashA
			if tc.typ == ClientPublic {
				hash = ""
			}
			got, err := NewClient(c, hash, clientNow)
			if tc.thenErr != "" {
				wantInvalid(t, err, tc.thenErr)
				registered, err := NewClient(confidential(), hashA, clientNow)
				if err != nil {
					t.Fatal(err)
				}
				_, err = registered.Update(c, "", clientNow)
				wantInvalid(t, err, tc.thenErr)
				return
			}
			if err != nil || got.Receiver != tc.role {
				t.Fatalf("%+v, %v", got, err)
			}
		})
	}
	// An update keeps what it is given, the role included.
	c, err := NewClient(confidential(), hashA, clientNow)
	if err != nil {
		t.Fatal(err)
	}
	next := confidential()
	next.Receiver = ReceiverAll
	if c, err = c.Update(next, "", clientNow); err != nil || c.Receiver != ReceiverAll {
		t.Fatalf("update to all: %+v, %v", c, err)
	}
	if c, err = c.Update(confidential(), "", clientNow); err != nil || c.IsReceiver() {
		t.Fatalf("update without the role: %+v, %v", c, err)
	}
}

func TestParseReceiverScope(t *testing.T) {
	tests := []struct {
		scope string
		want  []string
		err   string
	}{
		{"", []string{ScopeSSFRead, ScopeSSFManage}, ""},
		{"   ", []string{ScopeSSFRead, ScopeSSFManage}, ""},
		{"ssf.read", []string{ScopeSSFRead}, ""},
		{"ssf.manage", []string{ScopeSSFManage}, ""},
		{"ssf.manage ssf.read ssf.manage", []string{ScopeSSFManage, ScopeSSFRead}, ""},
		{"ssf.read openid", nil, EInvalidScope},
		{"ssf.manage.poll", nil, EInvalidScope},
		{"SSF.READ", nil, EInvalidScope},
		{"ssf.read \"x", nil, EInvalidRequest},
	}
	for _, tc := range tests {
		got, err := ParseReceiverScope(tc.scope)
		if tc.err != "" {
			if ErrorCode(err) != tc.err {
				t.Errorf("%q: %v, want %s", tc.scope, err, tc.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%q: %q, %v; want %q", tc.scope, got, err, tc.want)
		}
	}
	// The default is a copy: a caller changing it changes no one else's.
	got, _ := ParseReceiverScope("")
	got[0] = "changed"
	if ReceiverScopes[0] != ScopeSSFRead {
		t.Fatal("the default scopes were shared")
	}
}

func TestReceiverScopeAllows(t *testing.T) {
	tests := []struct {
		scope []string
		need  string
		ok    bool
	}{
		{[]string{ScopeSSFRead}, ScopeSSFRead, true},
		{[]string{ScopeSSFRead}, ScopeSSFManage, false},
		{[]string{ScopeSSFManage}, ScopeSSFManage, true},
		{[]string{ScopeSSFManage}, ScopeSSFRead, true},
		{[]string{ScopeSSFRead, ScopeSSFManage}, ScopeSSFManage, true},
		{nil, ScopeSSFRead, false},
		{[]string{"openid"}, ScopeSSFRead, false},
	}
	for _, tc := range tests {
		if got := ReceiverScopeAllows(tc.scope, tc.need); got != tc.ok {
			t.Errorf("%q needing %s: %v, want %v", tc.scope, tc.need, got, tc.ok)
		}
	}
}
