package executor

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strconv"
	"strings"
	"time"
)

// DefaultSignatureWindow is how far a v2 signature's signed-at time may be
// from the executor's clock, either way, before the executor refuses it:
// a signed request replayed later than that is refused for its time alone.
// The client dates signatures in the executor's clock as far as it knows
// it, so only a clock that stepped since the last answer counts against it.
const DefaultSignatureWindow = 5 * time.Minute

// MaxFenceAhead bounds how far a fence may be ahead of the executor's clock
// in unix ms before the executor refuses it (400) without recording it. A
// pool's fences count up from Redis's clock in ms by one per grant
// (design.md), so a fence further ahead than a day was granted by no pool:
// it can only be forged, and recorded it would refuse every real one.
const MaxFenceAhead = 24 * time.Hour

// ErrBadSignature is the error of ParseSignature for a SignatureHeader value
// that is not a signature of a known version.
var ErrBadSignature = errors.New("executor: malformed signature")

// Signature is a SignatureHeader value, parsed. Its MAC is checked against
// the secret by VerifyHead (v2) or Verify (v1).
type Signature struct {
	// Version is 1 or 2.
	Version int
	// SignedAtMs is when the request was signed, in unix ms in the
	// executor's clock as the caller knew it. v2 only.
	SignedAtMs int64
	// BodySHA256 is the SHA-256 of the body the signature covers. v2 only.
	BodySHA256 [sha256.Size]byte

	raw string
	mac []byte
}

// ParseSignature reads a SignatureHeader value without the secret: its
// version and, for v2, when it was signed and the digest of its body. It
// needs nothing but the header, so an executor refuses a malformed
// signature before it reads a byte of the body.
func ParseSignature(value string) (Signature, error) {
	if v1, ok := strings.CutPrefix(value, "v1="); ok {
		mac, err := hex.DecodeString(v1)
		if err != nil || len(mac) != sha256.Size {
			return Signature{}, ErrBadSignature
		}
		return Signature{Version: 1, raw: value, mac: mac}, nil
	}
	v2, ok := strings.CutPrefix(value, "v2=")
	if !ok {
		return Signature{}, ErrBadSignature
	}
	at, rest, ok1 := strings.Cut(v2, ".")
	sum, mac, ok2 := strings.Cut(rest, ".")
	ms, err := strconv.ParseInt(at, 10, 64)
	if !ok1 || !ok2 || err != nil || ms <= 0 {
		return Signature{}, ErrBadSignature
	}
	s := Signature{Version: 2, SignedAtMs: ms, raw: value}
	if n, err := hex.Decode(s.BodySHA256[:], []byte(sum)); err != nil || n != sha256.Size || len(sum) != 2*sha256.Size {
		return Signature{}, ErrBadSignature
	}
	if s.mac, err = hex.DecodeString(mac); err != nil || len(s.mac) != sha256.Size {
		return Signature{}, ErrBadSignature
	}
	return s, nil
}

// SignV2 returns the value of the SignatureHeader of a request, version 2:
//
//	v2=<signed at ms>.<hex SHA-256(body)>.<hex HMAC-SHA256(secret,
//	  "evalpool-v2\n" method "\n" host "\n" path "\n" deadline "\n"
//	  signed at ms "\n" hex SHA-256(body))>
//
// host is the host:port the caller dialed (the Host header), path the path
// on the request line, deadline the DeadlineHeader's value (empty when there
// is none), and signedAtMs the caller's estimate of the executor's clock in
// unix ms. The host binds the request to one executor and the time to a
// window (DefaultSignatureWindow), so that a request replayed to another
// executor with the same secret, or replayed later, is refused; the digest
// lets the executor check the MAC before it reads the body.
func SignV2(secret []byte, method, host, path, deadline string, signedAtMs int64, body []byte) string {
	sum := sha256.Sum256(body)
	sumHex := hex.EncodeToString(sum[:])
	at := strconv.FormatInt(signedAtMs, 10)
	return "v2=" + at + "." + sumHex + "." + hex.EncodeToString(macV2(secret, method, host, path, deadline, at, sumHex))
}

// VerifyHead reports whether a v2 signature's MAC is the one SignV2 gives
// for the request's head, comparing in constant time. The body is checked
// apart, once read, by VerifyBody. It is false for a v1 signature.
func (s Signature) VerifyHead(secret []byte, method, host, path, deadline string) bool {
	if s.Version != 2 {
		return false
	}
	return hmac.Equal(s.mac, macV2(secret, method, host, path, deadline, strconv.FormatInt(s.SignedAtMs, 10), hex.EncodeToString(s.BodySHA256[:])))
}

// VerifyBody reports whether body is the one a v2 signature covers. For a
// v1 signature it checks the whole signature, as Verify does.
func (s Signature) VerifyBody(secret []byte, method, path, deadline string, body []byte) bool {
	if s.Version == 1 {
		return Verify(secret, s.raw, method, path, deadline, body)
	}
	sum := sha256.Sum256(body)
	return hmac.Equal(sum[:], s.BodySHA256[:])
}

func macV2(secret []byte, method, host, path, deadline, at, sumHex string) []byte {
	m := hmac.New(sha256.New, secret)
	_, _ = io.WriteString(m, "evalpool-v2\n"+method+"\n"+strings.ToLower(host)+"\n"+path+"\n"+deadline+"\n"+at+"\n"+sumHex)
	return m.Sum(nil)
}
