VFrom: a@example.com\u000aTo: b@example.com\u000aSubject: hi\u000a\u000abody\u000a
p0
.(dp0
Vlistid
p1
Vtest.example.com
p2
sVversion
p3
I3
sV_parsemsg
p4
I01
s.