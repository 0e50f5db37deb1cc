package wire

// HeaderTimeout is the request header in which a caller tells tokend how
// long it will wait for the answer, in whole milliseconds from sending it
// (client.Client sets it from its context's deadline). A request that
// cannot start with 100 ms of that left is answered
// temporarily_unavailable instead of being run, so a refresh never rotates
// a token whose caller has stopped waiting for the new one.
const HeaderTimeout = "Tokend-Timeout-Ms"
