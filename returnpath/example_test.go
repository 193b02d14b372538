package returnpath_test

import (
	"fmt"
	"strings"

	"github.com/google/uuid"

	"github.com/mailferry/mailferry/returnpath"
)

func ExampleSigner() {
	s, err := returnpath.New("bounces.example.com", []byte("a secret key of 32 bytes or so.."))
	if err != nil {
		fmt.Println(err)
		return
	}
	id := uuid.MustParse("0193a5c2-7c1e-7f3a-9d2b-5e6f70819a2b")
	addr := s.Address(id, 2)
	fmt.Println(len(addr[:strings.IndexByte(addr, '@')]) <= 64)

	// Some MTAs upper-case the local part; it still parses.
	gotID, idx, err := s.Parse(strings.ToUpper(addr))
	fmt.Println(gotID, idx, err)

	_, _, err = s.Parse("postmaster@bounces.example.com")
	fmt.Println(err)
	// Output:
	// true
	// 0193a5c2-7c1e-7f3a-9d2b-5e6f70819a2b 2 <nil>
	// return path "postmaster@bounces.example.com": not a return path of ours
}
