// s3server: an S3-compatible server for tests and local deployments (github.com/johannesboyne/gofakes3)
// that, unlike gofakes3 alone, refuses requests that are not signed (AWS Signature Version 4) with
// its one access key and secret, as a real S3 endpoint does.
//
//	s3server -addr 127.0.0.1:0 -db /tmp/s3.db -access-key AK -secret-key SK -bucket results
//
// Storage: -db names a bolt database file (gofakes3's s3bolt backend: every object, with its user
// metadata, in one file; writes are transactions, so an object is replaced whole or not at all);
// without -db objects live in memory. Addressing is path-style (http://host:port/bucket/key).
//
// Authentication: the Authorization header (or a presigned URL's X-Amz-* query) must carry the
// configured access key (else 403 InvalidAccessKeyId) and a valid signature (else 403
// SignatureDoesNotMatch); unsigned requests get 403 AccessDenied. A payload given as a hex sha256 in
// x-amz-content-sha256 is checked against the body (400 XAmzContentSHA256Mismatch). An aws-chunked
// body with an unsigned trailer (STREAMING-UNSIGNED-PAYLOAD-TRAILER) is decoded before gofakes3
// sees it; the per-chunk signatures of STREAMING-AWS4-HMAC-SHA256-PAYLOAD are not checked.
//
// Once listening, it prints "s3server: listening on http://HOST:PORT" on stdout (with the real
// port when -addr asks for port 0) and serves until SIGINT or SIGTERM.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3bolt"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

const (
	algorithm       = "AWS4-HMAC-SHA256"
	unsignedPayload = "UNSIGNED-PAYLOAD"
	unsignedTrailer = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
)

type bucketList []string

func (b *bucketList) String() string     { return strings.Join(*b, ",") }
func (b *bucketList) Set(v string) error { *b = append(*b, v); return nil }

func main() {
	if err := run(); err != nil {
		log.Fatalf("s3server: %v", err)
	}
}

func run() error {
	addr := flag.String("addr", "127.0.0.1:9000", "listen address (port 0: any free port, printed on stdout)")
	db := flag.String("db", "", "bolt database file for the objects (empty: in memory)")
	accessKey := flag.String("access-key", envOr("S3SERVER_ACCESS_KEY", ""), "the one accepted access key id (env S3SERVER_ACCESS_KEY)")
	secretKey := flag.String("secret-key", envOr("S3SERVER_SECRET_KEY", ""), "its secret (env S3SERVER_SECRET_KEY)")
	quiet := flag.Bool("quiet", false, "no per-request log")
	var buckets bucketList
	flag.Var(&buckets, "bucket", "create this bucket at start if missing (repeatable)")
	flag.Parse()
	if *accessKey == "" || *secretKey == "" {
		return errors.New("-access-key and -secret-key (or S3SERVER_ACCESS_KEY, S3SERVER_SECRET_KEY) are required")
	}

	var backend gofakes3.Backend
	if *db != "" {
		b, err := s3bolt.NewFile(*db)
		if err != nil {
			return fmt.Errorf("open %s: %w", *db, err)
		}
		backend = b
	} else {
		backend = s3mem.New()
	}
	for _, name := range buckets {
		if err := backend.CreateBucket(name); err != nil && !gofakes3.IsAlreadyExists(err) {
			return fmt.Errorf("create bucket %q: %w", name, err)
		}
	}

	opts := []gofakes3.Option{gofakes3.WithAutoBucket(false)}
	if *quiet {
		opts = append(opts, gofakes3.WithLogger(gofakes3.DiscardLog()))
	} else {
		opts = append(opts, gofakes3.WithLogger(gofakes3.StdLog(log.New(os.Stderr, "s3server: ", log.LstdFlags), gofakes3.LogErr, gofakes3.LogWarn, gofakes3.LogInfo)))
	}
	faker := gofakes3.New(backend, opts...)
	handler := &sigV4{next: faker.Server(), accessKey: *accessKey, secretKey: *secretKey}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 30 * time.Second}
	fmt.Printf("s3server: listening on http://%s\n", ln.Addr().String())
	os.Stdout.Sync()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(shutdown)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// sigV4 checks AWS Signature Version 4 before handing a request to gofakes3.
type sigV4 struct {
	next      http.Handler
	accessKey string
	secretKey string
}

type s3Error struct {
	XMLName   xml.Name `xml:"Error"`
	Code      string   `xml:"Code"`
	Message   string   `xml:"Message"`
	Resource  string   `xml:"Resource"`
	RequestID string   `xml:"RequestId"`
}

func writeError(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	body, _ := xml.Marshal(s3Error{Code: code, Message: msg, Resource: r.URL.Path, RequestID: "s3server"})
	w.Write([]byte(xml.Header))
	w.Write(body)
}

// awsEscape encodes as SigV4 wants: unreserved characters as they are, everything else %XX.
func awsEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if ('A' <= c && c <= 'Z') || ('a' <= c && c <= 'z') || ('0' <= c && c <= '9') || c == '-' || c == '_' || c == '.' || c == '~' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

func canonicalQuery(raw string, skip string) (string, error) {
	type kv struct{ k, v string }
	var pairs []kv
	for _, part := range strings.Split(raw, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		dk, err := url.QueryUnescape(k)
		if err != nil {
			return "", err
		}
		if dk == skip {
			continue
		}
		dv, err := url.QueryUnescape(v)
		if err != nil {
			return "", err
		}
		pairs = append(pairs, kv{awsEscape(dk), awsEscape(dv)})
	}
	sort.Slice(pairs, func(i, j int) bool {
		if pairs[i].k != pairs[j].k {
			return pairs[i].k < pairs[j].k
		}
		return pairs[i].v < pairs[j].v
	})
	out := make([]string, len(pairs))
	for i, p := range pairs {
		out[i] = p.k + "=" + p.v
	}
	return strings.Join(out, "&"), nil
}

func headerValue(r *http.Request, name string) string {
	switch name {
	case "host":
		return r.Host
	case "content-length":
		if v := r.Header.Get("Content-Length"); v != "" {
			return v
		}
		return strconv.FormatInt(r.ContentLength, 10)
	}
	vals := r.Header.Values(name)
	for i, v := range vals {
		vals[i] = strings.Join(strings.Fields(v), " ")
	}
	return strings.Join(vals, ",")
}

func hmacSHA256(key []byte, data string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(data))
	return m.Sum(nil)
}

type authInfo struct {
	credential, signedHeaders, signature, amzDate, payloadHash string
	presigned                                                  bool
}

func parseAuth(r *http.Request) (authInfo, string, string) {
	var a authInfo
	if h := r.Header.Get("Authorization"); h != "" {
		if !strings.HasPrefix(h, algorithm+" ") {
			return a, "AccessDenied", "only " + algorithm + " (Signature Version 4) is accepted"
		}
		for _, field := range strings.Split(strings.TrimPrefix(h, algorithm+" "), ",") {
			k, v, _ := strings.Cut(strings.TrimSpace(field), "=")
			switch k {
			case "Credential":
				a.credential = v
			case "SignedHeaders":
				a.signedHeaders = v
			case "Signature":
				a.signature = v
			}
		}
		a.amzDate = r.Header.Get("X-Amz-Date")
		a.payloadHash = r.Header.Get("X-Amz-Content-Sha256")
		if a.payloadHash == "" {
			a.payloadHash = unsignedPayload
		}
	} else if q := r.URL.Query(); q.Get("X-Amz-Algorithm") != "" {
		if q.Get("X-Amz-Algorithm") != algorithm {
			return a, "AccessDenied", "only " + algorithm + " (Signature Version 4) is accepted"
		}
		a.presigned = true
		a.credential = q.Get("X-Amz-Credential")
		a.signedHeaders = q.Get("X-Amz-SignedHeaders")
		a.signature = q.Get("X-Amz-Signature")
		a.amzDate = q.Get("X-Amz-Date")
		a.payloadHash = unsignedPayload
		if expires, err := strconv.Atoi(q.Get("X-Amz-Expires")); err == nil {
			if t, err := time.Parse("20060102T150405Z", a.amzDate); err == nil && time.Now().After(t.Add(time.Duration(expires)*time.Second)) {
				return a, "AccessDenied", "Request has expired"
			}
		}
	} else if r.URL.Query().Get("AWSAccessKeyId") != "" {
		return a, "AccessDenied", "only " + algorithm + " (Signature Version 4) is accepted, not Signature Version 2"
	} else {
		return a, "AccessDenied", "Access Denied (the request is not signed)"
	}
	if a.credential == "" || a.signedHeaders == "" || a.signature == "" || a.amzDate == "" {
		return a, "AuthorizationHeaderMalformed", "incomplete Signature Version 4 authorization"
	}
	return a, "", ""
}

func (s *sigV4) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a, code, msg := parseAuth(r)
	if code != "" {
		writeError(w, r, http.StatusForbidden, code, msg)
		return
	}
	scopeParts := strings.SplitN(a.credential, "/", 5) // AKID/date/region/service/aws4_request
	if len(scopeParts) != 5 || scopeParts[4] != "aws4_request" {
		writeError(w, r, http.StatusBadRequest, "AuthorizationHeaderMalformed", "bad credential scope "+a.credential)
		return
	}
	if subtle.ConstantTimeCompare([]byte(scopeParts[0]), []byte(s.accessKey)) != 1 {
		writeError(w, r, http.StatusForbidden, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
		return
	}
	scope := strings.Join(scopeParts[1:], "/")

	path := r.RequestURI
	rawQuery := ""
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path, rawQuery = path[:i], path[i+1:]
	}
	if path == "" {
		path = "/"
	}
	skip := ""
	if a.presigned {
		skip = "X-Amz-Signature"
	}
	query, err := canonicalQuery(rawQuery, skip)
	if err != nil {
		writeError(w, r, http.StatusBadRequest, "InvalidArgument", "bad query string")
		return
	}
	var headers strings.Builder
	for _, name := range strings.Split(a.signedHeaders, ";") {
		headers.WriteString(name + ":" + strings.TrimSpace(headerValue(r, name)) + "\n")
	}
	canonical := strings.Join([]string{r.Method, path, query, headers.String(), a.signedHeaders, a.payloadHash}, "\n")
	sum := sha256.Sum256([]byte(canonical))
	toSign := strings.Join([]string{algorithm, a.amzDate, scope, hex.EncodeToString(sum[:])}, "\n")
	key := hmacSHA256([]byte("AWS4"+s.secretKey), scopeParts[1])
	key = hmacSHA256(key, scopeParts[2])
	key = hmacSHA256(key, scopeParts[3])
	key = hmacSHA256(key, "aws4_request")
	want := hex.EncodeToString(hmacSHA256(key, toSign))
	if subtle.ConstantTimeCompare([]byte(want), []byte(a.signature)) != 1 {
		writeError(w, r, http.StatusForbidden, "SignatureDoesNotMatch",
			"The request signature we calculated does not match the signature you provided. Check your key and signing method.")
		return
	}

	switch {
	case len(a.payloadHash) == 64 && r.Body != nil && r.Body != http.NoBody:
		body, err := io.ReadAll(r.Body)
		if err != nil {
			writeError(w, r, http.StatusBadRequest, "IncompleteBody", err.Error())
			return
		}
		got := sha256.Sum256(body)
		if hex.EncodeToString(got[:]) != strings.ToLower(a.payloadHash) {
			writeError(w, r, http.StatusBadRequest, "XAmzContentSHA256Mismatch",
				"The provided 'x-amz-content-sha256' header does not match what was computed.")
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
	case a.payloadHash == unsignedTrailer:
		body, err := decodeUnsignedChunked(r.Body)
		if err != nil {
			writeError(w, r, http.StatusBadRequest, "IncompleteBody", "aws-chunked body: "+err.Error())
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		r.Header.Set("Content-Length", strconv.Itoa(len(body)))
		r.Header.Set("X-Amz-Content-Sha256", unsignedPayload)
		r.Header.Del("X-Amz-Decoded-Content-Length")
		r.Header.Del("X-Amz-Trailer")
		var enc []string
		for _, e := range strings.Split(r.Header.Get("Content-Encoding"), ",") {
			if e = strings.TrimSpace(e); e != "" && e != "aws-chunked" {
				enc = append(enc, e)
			}
		}
		if len(enc) > 0 {
			r.Header.Set("Content-Encoding", strings.Join(enc, ","))
		} else {
			r.Header.Del("Content-Encoding")
		}
	}
	lw := &lowerMetaWriter{ResponseWriter: w}
	s.next.ServeHTTP(lw, r)
	lw.fix() // a response with neither Write nor WriteHeader (a HEAD) is sent after this returns
}

// lowerMetaWriter sends user metadata headers (x-amz-meta-*) in lower case, as S3 does: gofakes3
// keeps Go's canonical form (X-Amz-Meta-Sha256), which clients then report as key "Sha256".
type lowerMetaWriter struct {
	http.ResponseWriter
	fixed bool
}

func (w *lowerMetaWriter) fix() {
	if w.fixed {
		return
	}
	w.fixed = true
	h := w.ResponseWriter.Header()
	for k, v := range h {
		if strings.HasPrefix(k, "X-Amz-Meta-") {
			delete(h, k)
			h[strings.ToLower(k)] = v
		}
	}
}

func (w *lowerMetaWriter) WriteHeader(code int) {
	w.fix()
	w.ResponseWriter.WriteHeader(code)
}

func (w *lowerMetaWriter) Write(b []byte) (int, error) {
	w.fix()
	return w.ResponseWriter.Write(b)
}

// decodeUnsignedChunked reads an aws-chunked body (hex-size CRLF data CRLF ... 0 CRLF trailers CRLF).
func decodeUnsignedChunked(body io.Reader) ([]byte, error) {
	br := bufio.NewReader(body)
	var out bytes.Buffer
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return nil, err
		}
		sizeField, _, _ := strings.Cut(strings.TrimSpace(line), ";")
		size, err := strconv.ParseInt(sizeField, 16, 64)
		if err != nil {
			return nil, fmt.Errorf("bad chunk size %q", line)
		}
		if size == 0 {
			io.Copy(io.Discard, br) // trailers (checksums), not checked here
			return out.Bytes(), nil
		}
		if _, err := io.CopyN(&out, br, size); err != nil {
			return nil, err
		}
		if _, err := br.Discard(2); err != nil {
			return nil, err
		}
	}
}
