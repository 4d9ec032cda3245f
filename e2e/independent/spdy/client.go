// Command client is an independent SPDY/3.1 client of crius' streaming server, built on docker's spdystream
// (the library under kubelet's, kubectl's and crictl's SPDY streams) and Go's standard library only, so that a
// misunderstanding shared by crius' server and a Rust client of ours cannot hide.
//
//	client exec|attach --url URL [--method POST|GET] [--protocol v4.channel.k8s.io,...] [--stdin FILE|-] [--stdin-hold] [--tty]
//	       [--resize WxH] [--no-stdout] [--no-stderr] [--expect TEXT] [--timeout 60s]
//	client portforward --url URL --ports 8080,8081 [--connections N] [--send FILE] [--timeout 60s]
//
// It does the HTTP upgrade itself, follows Kubernetes' remotecommand and portforward protocols as client-go
// does (error stream first, stdin half-closed at its end) and prints ONE JSON object on stdout. Its exit status
// is 0 whenever it printed that object, whatever the server did; anything else (bad arguments) exits 2.
//
// Build in GOPATH mode: GO111MODULE=off GOPATH=/usr/share/gocode go build -o client client.go
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/spdystream"
)

// How long the server gets to answer each SYN_STREAM (client-go waits 30 s too).
const replyTimeout = 30 * time.Second

// What the server did, as seen on the wire. Byte slices are base64 in the JSON (encoding/json's rule).
type result struct {
	Protocol     string          `json:"protocol"`
	HTTPStatus   int             `json:"http_status"`
	HTTPBody     string          `json:"http_body"`
	Stdout       []byte          `json:"stdout_b64"`
	Stderr       []byte          `json:"stderr_b64"`
	ErrorStream  string          `json:"error_stream"`
	ExitCode     *int            `json:"exit_code"`
	Status       json.RawMessage `json:"status"`
	ServerClosed bool            `json:"server_closed"`
	Pairs        []*pairResult   `json:"pairs,omitempty"`
	Error        string          `json:"error,omitempty"`
}

type pairResult struct {
	Port        int    `json:"port"`
	RequestID   int    `json:"request_id"`
	Data        []byte `json:"data_b64"`
	ErrorStream string `json:"error_stream"`
	Error       string `json:"error,omitempty"`
}

// One run: the result being filled in, guarded so that a timeout can report what came so far.
type session struct {
	mu     sync.Mutex
	res    result
	stdout *collector
	stderr *collector
	errs   *collector
	pairs  []*pair
}

func (s *session) set(f func(r *result)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.res)
}

// The result as it stands; pairs still running are marked unfinished.
func (s *session) snapshot() result {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.res
	r.Stdout, r.Stderr = s.stdout.bytes(), s.stderr.bytes()
	if r.ErrorStream == "" {
		r.ErrorStream = string(s.errs.bytes())
	}
	for _, p := range s.pairs {
		pr := &pairResult{Port: p.port, RequestID: p.id, Data: p.data.bytes(), ErrorStream: string(p.errs.bytes()), Error: p.err}
		if !p.done && pr.Error == "" {
			pr.Error = "unfinished"
		}
		r.Pairs = append(r.Pairs, pr)
	}
	return r
}

// One port-forward pair: its streams' bytes and how it ended (fields other than collectors under session.mu).
type pair struct {
	port, id   int
	data, errs *collector
	err        string
	done       bool
}

// A byte sink safe to read while being written, which can signal when it first contains a text.
type collector struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	expect string
	seen   chan struct{}
}

func newCollector(expect string) *collector {
	return &collector{expect: expect, seen: make(chan struct{})}
}

func (c *collector) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf.Write(p)
	if c.expect != "" && bytes.Contains(c.buf.Bytes(), []byte(c.expect)) {
		select {
		case <-c.seen:
		default:
			close(c.seen)
		}
	}
	return len(p), nil
}

func (c *collector) bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.buf.Bytes()...)
}

// A net.Conn whose reads start with what the HTTP response parser buffered past the 101.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// Sends the upgrade request and reads the answer. On a 101 it returns the connection, ready for SPDY; on any
// other status, nil and no error (the status and body are in the result).
func upgrade(raw, method string, protocols []string, s *session) (net.Conn, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "http" {
		return nil, fmt.Errorf("not an http URL: %q", raw)
	}
	conn, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequest(method, raw, nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "SPDY/3.1")
	for _, p := range protocols {
		req.Header.Add("X-Stream-Protocol-Version", p)
	}
	conn.SetDeadline(time.Now().Add(replyTimeout))
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, fmt.Errorf("writing the upgrade request: %v", err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("reading the upgrade response: %v", err)
	}
	chosen := resp.Header.Get("X-Stream-Protocol-Version")
	s.set(func(r *result) { r.HTTPStatus, r.Protocol = resp.StatusCode, chosen })
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		s.set(func(r *result) { r.HTTPBody = string(body) })
		conn.Close()
		return nil, nil
	}
	if !strings.EqualFold(resp.Header.Get("Upgrade"), "SPDY/3.1") ||
		!strings.Contains(strings.ToLower(resp.Header.Get("Connection")), "upgrade") {
		conn.Close()
		return nil, fmt.Errorf("101 without Connection: Upgrade / Upgrade: SPDY/3.1: %v", resp.Header)
	}
	if !contains(protocols, chosen) {
		conn.Close()
		return nil, fmt.Errorf("101 chose protocol %q, not one offered (%v)", chosen, protocols)
	}
	conn.SetDeadline(time.Time{})
	return &bufferedConn{Conn: conn, r: br}, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Opens a stream with these headers (name, value, ...) and waits for the server's SYN_REPLY.
func open(conn *spdystream.Connection, headers ...string) (*spdystream.Stream, error) {
	h := http.Header{}
	for i := 0; i+1 < len(headers); i += 2 {
		h.Set(headers[i], headers[i+1])
	}
	st, err := conn.CreateStream(h, nil, false)
	if err != nil {
		return nil, fmt.Errorf("creating stream %v: %v", h, err)
	}
	if err := st.WaitTimeout(replyTimeout); err != nil {
		return nil, fmt.Errorf("no reply to stream %v: %v", h, err)
	}
	return st, nil
}

// remotecommand's version number: 1 for channel.k8s.io, N for vN.channel.k8s.io.
func version(protocol string) int {
	if n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(protocol, "v"), ".channel.k8s.io")); err == nil {
		return n
	}
	return 1
}

type commandOptions struct {
	url, method, stdin, resize, expect string
	protocols                          []string
	hold, tty, noStdout, noStderr      bool
}

// One exec or attach session, as client-go's streamProtocolV2..V4 run it: the error stream first, then stdin,
// stdout, stderr (not with a tty) and resize (tty, v3+), each waited for; stdin copied then half-closed; the
// outputs read to their end, then the error stream.
func remoteCommand(o commandOptions, s *session) error {
	raw, err := upgrade(o.url, o.method, o.protocols, s)
	if raw == nil || err != nil {
		return err
	}
	defer raw.Close()
	conn, err := spdystream.NewConnection(raw, false)
	if err != nil {
		return err
	}
	go conn.Serve(spdystream.NoOpStreamHandler)
	v := version(s.snapshot().Protocol)

	errStream, err := open(conn, "streamType", "error")
	if err != nil {
		return err
	}
	var stdinStream, stdoutStream, stderrStream, resizeStream *spdystream.Stream
	if o.stdin != "" {
		if stdinStream, err = open(conn, "streamType", "stdin"); err != nil {
			return err
		}
	}
	if !o.noStdout {
		if stdoutStream, err = open(conn, "streamType", "stdout"); err != nil {
			return err
		}
	}
	if !o.tty && !o.noStderr {
		if stderrStream, err = open(conn, "streamType", "stderr"); err != nil {
			return err
		}
	}
	if o.tty && v >= 3 {
		if resizeStream, err = open(conn, "streamType", "resize"); err != nil {
			return err
		}
	}

	errDone := make(chan struct{})
	go func() { io.Copy(s.errs, errStream); close(errDone) }()
	if resizeStream != nil && o.resize != "" {
		var w, h uint16
		if _, err := fmt.Sscanf(o.resize, "%dx%d", &w, &h); err != nil {
			return fmt.Errorf("bad --resize %q", o.resize)
		}
		// One JSON object per size, newline-terminated as json.Encoder writes it (client-go's way).
		if err := json.NewEncoder(resizeStream).Encode(map[string]uint16{"Width": w, "Height": h}); err != nil {
			return fmt.Errorf("writing the resize stream: %v", err)
		}
	}
	if stdinStream != nil {
		go copyStdin(o, stdinStream)
	}
	var wg sync.WaitGroup
	for _, p := range []struct {
		st *spdystream.Stream
		c  *collector
	}{{stdoutStream, s.stdout}, {stderrStream, s.stderr}} {
		if p.st == nil {
			continue
		}
		wg.Add(1)
		go func(st *spdystream.Stream, c *collector) { defer wg.Done(); io.Copy(c, st) }(p.st, p.c)
	}
	outputsDone := make(chan struct{})
	go func() { wg.Wait(); close(outputsDone) }()

	select {
	case <-s.stdout.seen:
		// --expect: a session the server leaves running (attach) is ended from this side.
		return nil
	case <-outputsDone:
	}
	<-errDone
	msg := s.errs.bytes()
	s.set(func(r *result) { r.ErrorStream = string(msg); decodeError(v, msg, r) })
	// The server ends the connection once it has written the error stream.
	select {
	case <-conn.CloseChan():
		s.set(func(r *result) { r.ServerClosed = true })
	case <-time.After(5 * time.Second):
	}
	return nil
}

// Copies --stdin to the stdin stream, then half-closes it (EOF for the process) unless --stdin-hold.
func copyStdin(o commandOptions, st *spdystream.Stream) {
	var in io.Reader = os.Stdin
	if o.stdin != "-" {
		f, err := os.Open(o.stdin)
		if err != nil {
			fmt.Fprintf(os.Stderr, "client: %v\n", err)
			return
		}
		defer f.Close()
		in = f
	}
	io.Copy(st, in)
	if !o.hold {
		st.Close()
	}
}

// v4+ carries a metav1.Status; v1..v3 a failure's message as text and nothing on success.
func decodeError(v int, msg []byte, r *result) {
	zero := 0
	if v < 4 {
		if len(msg) == 0 {
			r.ExitCode = &zero
		}
		return
	}
	var st struct {
		Status  string `json:"status"`
		Reason  string `json:"reason"`
		Details struct {
			Causes []struct {
				Reason  string `json:"reason"`
				Message string `json:"message"`
			} `json:"causes"`
		} `json:"details"`
	}
	if len(msg) == 0 || json.Unmarshal(msg, &st) != nil {
		return
	}
	r.Status = json.RawMessage(msg)
	switch {
	case st.Status == "Success":
		r.ExitCode = &zero
	case st.Status == "Failure" && st.Reason == "NonZeroExitCode":
		for _, c := range st.Details.Causes {
			if n, err := strconv.Atoi(c.Message); err == nil && c.Reason == "ExitCode" {
				r.ExitCode = &n
			}
		}
	}
}

// Port-forward: every pair (error + data stream, one requestID) runs concurrently, as client-go's
// handleConnection does for each accepted local connection.
func portForward(o commandOptions, ports []int, connections int, send []byte, s *session) error {
	c, err := upgrade(o.url, o.method, []string{"portforward.k8s.io"}, s)
	if c == nil || err != nil {
		return err
	}
	defer c.Close()
	conn, err := spdystream.NewConnection(c, false)
	if err != nil {
		return err
	}
	go conn.Serve(spdystream.NoOpStreamHandler)
	var wg sync.WaitGroup
	s.mu.Lock()
	for i := 0; i < connections; i++ {
		for _, port := range ports {
			p := &pair{port: port, id: len(s.pairs), data: newCollector(""), errs: newCollector("")}
			s.pairs = append(s.pairs, p)
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := forwardOne(conn, p, send)
				s.mu.Lock()
				defer s.mu.Unlock()
				p.done = true
				if err != nil {
					p.err = err.Error()
				}
			}()
		}
	}
	s.mu.Unlock()
	wg.Wait()
	return nil
}

// One pair, as client-go opens it: the error stream (half-closed at once: the client never writes on it),
// then the data stream; the bytes sent, the data stream half-closed, both streams read to their end.
func forwardOne(conn *spdystream.Connection, p *pair, send []byte) error {
	port, id := strconv.Itoa(p.port), strconv.Itoa(p.id)
	errStream, err := open(conn, "streamType", "error", "port", port, "requestID", id)
	if err != nil {
		return err
	}
	errStream.Close()
	errDone := make(chan struct{})
	go func() { io.Copy(p.errs, errStream); close(errDone) }()
	data, err := open(conn, "streamType", "data", "port", port, "requestID", id)
	if err != nil {
		<-errDone
		return err
	}
	go func() {
		if len(send) > 0 {
			data.Write(send)
		}
		data.Close()
	}()
	io.Copy(p.data, data)
	<-errDone
	return nil
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	var o commandOptions
	fs.StringVar(&o.url, "url", "", "the URL Exec/Attach/PortForward returned")
	fs.StringVar(&o.method, "method", http.MethodPost, "the upgrade request's method (kubectl and crictl use POST)")
	protocols := fs.String("protocol", "v4.channel.k8s.io,v3.channel.k8s.io,v2.channel.k8s.io,channel.k8s.io",
		"X-Stream-Protocol-Version values offered, in order")
	fs.StringVar(&o.stdin, "stdin", "", "send this file (- for stdin) on a stdin stream")
	fs.BoolVar(&o.hold, "stdin-hold", false, "do not half-close stdin after the input ends")
	fs.BoolVar(&o.tty, "tty", false, "the session has a terminal (no stderr stream; a resize stream from v3)")
	fs.StringVar(&o.resize, "resize", "", "send this terminal size (WxH) on the resize stream")
	fs.BoolVar(&o.noStdout, "no-stdout", false, "open no stdout stream")
	fs.BoolVar(&o.noStderr, "no-stderr", false, "open no stderr stream")
	fs.StringVar(&o.expect, "expect", "", "end the session once stdout contains this text")
	portList := fs.String("ports", "", "port-forward: the ports, comma-separated (one pair each)")
	connections := fs.Int("connections", 1, "port-forward: pairs per port")
	sendFile := fs.String("send", "", "port-forward: the bytes to send on every data stream")
	timeout := fs.Duration("timeout", 60*time.Second, "give up (and report what came so far) after this long")
	fs.Parse(os.Args[2:])
	if o.url == "" {
		usage()
	}
	o.protocols = strings.Split(*protocols, ",")

	s := &session{stdout: newCollector(o.expect), stderr: newCollector(""), errs: newCollector("")}
	finished := make(chan error, 1)
	switch mode {
	case "exec", "attach":
		go func() { finished <- remoteCommand(o, s) }()
	case "portforward":
		var ports []int
		for _, p := range strings.Split(*portList, ",") {
			n, err := strconv.Atoi(p)
			if err != nil {
				usage()
			}
			ports = append(ports, n)
		}
		var send []byte
		if *sendFile != "" {
			b, err := os.ReadFile(*sendFile)
			if err != nil {
				fmt.Fprintf(os.Stderr, "client: %v\n", err)
				os.Exit(2)
			}
			send = b
		}
		go func() { finished <- portForward(o, ports, *connections, send, s) }()
	default:
		usage()
	}
	select {
	case err := <-finished:
		if err != nil {
			s.set(func(r *result) { r.Error = err.Error() })
		}
	case <-time.After(*timeout):
		s.set(func(r *result) { r.Error = fmt.Sprintf("timed out after %v", *timeout) })
	}
	out, _ := json.Marshal(s.snapshot())
	os.Stdout.Write(append(out, '\n'))
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: client exec|attach|portforward --url URL [flags] (see the source)")
	os.Exit(2)
}
