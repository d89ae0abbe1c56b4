package sip_test

import (
	"bytes"
	"net"
	"strings"
	"testing"
	"time"

	"voipbin/pkg/testenv"
)

// Garbage, broken and oversized SIP over UDP and TCP leaves the user agent serving: it still
// answers OPTIONS and completes a call afterwards.
func TestHostileInput(t *testing.T) {
	t.Parallel()
	ua := newUA(t, "", "")
	huge := strings.Repeat("A", 60000)
	inputs := []string{
		"\x00\x01\x02\xff\xfe garbage",
		"INVITE\r\n\r\n",
		"INVITE sip:x SIP/2.0\r\n\r\n",                            // no headers at all
		"BYE sip:voipbin@127.0.0.1 SIP/2.0\r\nCall-ID: a\r\n\r\n", // no Via, From, To, CSeq
		"BYE sip:voipbin@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK.x\r\nCSeq: 1 BYE\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: nope\r\nContent-Length: 0\r\n\r\n",
		"OPTIONS sip:x SIP/2.0\r\nX-Huge: " + huge + "\r\n\r\n",                                      // a huge header
		"OPTIONS sip:x SIP/2.0\r\nContent-Length: 99999999\r\n\r\nshort",                             // a lying length
		"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK.nope\r\nCSeq: 1 INVITE\r\n\r\n", // a stray response
		strings.Repeat("Via: x\r\n", 5000),
	}
	udp, err := net.Dial("udp", ua.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	for _, in := range inputs {
		_, _ = udp.Write([]byte(in))
	}
	for _, in := range append(inputs, strings.Repeat("X", 4<<20)) { // and 4 MiB without a line end
		c, err := net.Dial("tcp", ua.Addr())
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Write([]byte(in))
		_ = c.Close()
	}

	// Still answering.
	options := "OPTIONS sip:voipbin@" + ua.Addr() + " SIP/2.0\r\nVia: SIP/2.0/UDP " + udp.LocalAddr().String() +
		";branch=z9hG4bK.alive1\r\nFrom: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:voipbin@127.0.0.1>\r\nCall-ID: alive\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
	buf := make([]byte, 65535)
	testenv.Eventually(t, 10*time.Second, "a 200 to OPTIONS", func() bool {
		_, _ = udp.Write([]byte(options))
		_ = udp.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		for {
			n, err := udp.Read(buf)
			if err != nil {
				return false
			}
			if bytes.HasPrefix(buf[:n], []byte("SIP/2.0 200")) && bytes.Contains(buf[:n], []byte("alive")) {
				return true
			}
		}
	})
	sim := startCarrier(t)
	r, _ := dial(t, ua, "sip:+1200000001@"+sim.Addr(), 10*time.Second, time.Hour)
	testenv.Eventually(t, 10*time.Second, "a full call", r.ended)
	if !r.has("answered 200") || !r.has(`ended 200 by remote reason ""`) {
		t.Errorf("steps = %q", r.got())
	}
}
