package wire

// HeaderTimeout is the request header in which a caller tells tokend how
// long it will wait for the answer, in whole milliseconds from sending it
// (client.Client sets it from its context's deadline). A request that
// cannot start with 100 ms of that left is answered
// temporarily_unavailable instead of being run, so a refresh never rotates
// a token whose caller has stopped waiting for the new one.
const HeaderTimeout = "Tokend-Timeout-Ms"

// HeaderDeadline is the request header in which a caller tells tokend when
// it stops waiting, as Unix milliseconds by its own clock (client.Client
// sets it beside HeaderTimeout). HeaderTimeout counts from when tokend's
// handler gets the request, so it cannot see time a request spent queued
// before that, in a frozen (stopped, swapped, partitioned) tokend's socket;
// this one can. tokend allows MaxDeadlineSkew for the two clocks.
const HeaderDeadline = "Tokend-Deadline"
