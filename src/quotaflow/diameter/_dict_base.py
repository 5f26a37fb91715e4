"""RFC 6733 base protocol: AVPs, the peer commands (CER, DWR, DPR) and a few RADIUS-derived
AVPs (RFC 7155) that credit-control clients send at the top level."""

from quotaflow.diameter.dictionary import AvpSpec, AvpType, CommandSpec

T = AvpType

APPLICATIONS = {0: "Diameter Common Messages", 0xFFFFFFFF: "Relay"}

AVPS = (
    AvpSpec(1, "User-Name", T.UTF8_STRING),
    AvpSpec(11, "Filter-Id", T.UTF8_STRING),
    AvpSpec(25, "Class", T.OCTET_STRING),
    AvpSpec(27, "Session-Timeout", T.UNSIGNED32),
    AvpSpec(30, "Called-Station-Id", T.UTF8_STRING),
    AvpSpec(31, "Calling-Station-Id", T.UTF8_STRING),
    AvpSpec(33, "Proxy-State", T.OCTET_STRING),
    AvpSpec(44, "Acct-Session-Id", T.OCTET_STRING),
    AvpSpec(50, "Acct-Multi-Session-Id", T.UTF8_STRING),
    AvpSpec(55, "Event-Timestamp", T.TIME),
    AvpSpec(85, "Acct-Interim-Interval", T.UNSIGNED32),
    AvpSpec(97, "Framed-IPv6-Prefix", T.OCTET_STRING),
    AvpSpec(257, "Host-IP-Address", T.ADDRESS),
    AvpSpec(258, "Auth-Application-Id", T.UNSIGNED32),
    AvpSpec(259, "Acct-Application-Id", T.UNSIGNED32),
    AvpSpec(
        260,
        "Vendor-Specific-Application-Id",
        T.GROUPED,
        # RFC 3588 peers may repeat Vendor-Id; RFC 6733 wants one. Accept both.
        abnf="1*{Vendor-Id} [Auth-Application-Id] [Acct-Application-Id] *[AVP]",
    ),
    AvpSpec(
        261,
        "Redirect-Host-Usage",
        T.ENUMERATED,
        enum={
            0: "DONT_CACHE",
            1: "ALL_SESSION",
            2: "ALL_REALM",
            3: "REALM_AND_APPLICATION",
            4: "ALL_APPLICATION",
            5: "ALL_HOST",
            6: "ALL_USER",
        },
    ),
    AvpSpec(262, "Redirect-Max-Cache-Time", T.UNSIGNED32),
    AvpSpec(263, "Session-Id", T.UTF8_STRING),
    AvpSpec(264, "Origin-Host", T.DIAMETER_IDENTITY),
    AvpSpec(265, "Supported-Vendor-Id", T.UNSIGNED32),
    AvpSpec(266, "Vendor-Id", T.UNSIGNED32),
    AvpSpec(267, "Firmware-Revision", T.UNSIGNED32, m_bit="mustnot"),
    AvpSpec(268, "Result-Code", T.UNSIGNED32),
    AvpSpec(269, "Product-Name", T.UTF8_STRING, m_bit="mustnot"),
    AvpSpec(270, "Session-Binding", T.UNSIGNED32),
    AvpSpec(
        271,
        "Session-Server-Failover",
        T.ENUMERATED,
        enum={
            0: "REFUSE_SERVICE",
            1: "TRY_AGAIN",
            2: "ALLOW_SERVICE",
            3: "TRY_AGAIN_ALLOW_SERVICE",
        },
    ),
    AvpSpec(272, "Multi-Round-Time-Out", T.UNSIGNED32),
    AvpSpec(
        273,
        "Disconnect-Cause",
        T.ENUMERATED,
        enum={0: "REBOOTING", 1: "BUSY", 2: "DO_NOT_WANT_TO_TALK_TO_YOU"},
    ),
    AvpSpec(
        274,
        "Auth-Request-Type",
        T.ENUMERATED,
        enum={1: "AUTHENTICATE_ONLY", 2: "AUTHORIZE_ONLY", 3: "AUTHORIZE_AUTHENTICATE"},
    ),
    AvpSpec(276, "Auth-Grace-Period", T.UNSIGNED32),
    AvpSpec(
        277,
        "Auth-Session-State",
        T.ENUMERATED,
        enum={0: "STATE_MAINTAINED", 1: "NO_STATE_MAINTAINED"},
    ),
    AvpSpec(278, "Origin-State-Id", T.UNSIGNED32),
    AvpSpec(279, "Failed-AVP", T.GROUPED, abnf="*[AVP]", opaque=True),
    AvpSpec(280, "Proxy-Host", T.DIAMETER_IDENTITY),
    AvpSpec(281, "Error-Message", T.UTF8_STRING, m_bit="mustnot"),
    AvpSpec(282, "Route-Record", T.DIAMETER_IDENTITY),
    AvpSpec(283, "Destination-Realm", T.DIAMETER_IDENTITY),
    AvpSpec(284, "Proxy-Info", T.GROUPED, abnf="{Proxy-Host} {Proxy-State} *[AVP]"),
    AvpSpec(
        285,
        "Re-Auth-Request-Type",
        T.ENUMERATED,
        enum={0: "AUTHORIZE_ONLY", 1: "AUTHORIZE_AUTHENTICATE"},
    ),
    AvpSpec(287, "Accounting-Sub-Session-Id", T.UNSIGNED64),
    AvpSpec(291, "Authorization-Lifetime", T.UNSIGNED32),
    AvpSpec(292, "Redirect-Host", T.DIAMETER_URI),
    AvpSpec(293, "Destination-Host", T.DIAMETER_IDENTITY),
    AvpSpec(294, "Error-Reporting-Host", T.DIAMETER_IDENTITY, m_bit="mustnot"),
    AvpSpec(
        295,
        "Termination-Cause",
        T.ENUMERATED,
        enum={
            1: "DIAMETER_LOGOUT",
            2: "DIAMETER_SERVICE_NOT_PROVIDED",
            3: "DIAMETER_BAD_ANSWER",
            4: "DIAMETER_ADMINISTRATIVE",
            5: "DIAMETER_LINK_BROKEN",
            6: "DIAMETER_AUTH_EXPIRED",
            7: "DIAMETER_USER_MOVED",
            8: "DIAMETER_SESSION_TIMEOUT",
        },
    ),
    AvpSpec(296, "Origin-Realm", T.DIAMETER_IDENTITY),
    AvpSpec(
        297,
        "Experimental-Result",
        T.GROUPED,
        abnf="{Vendor-Id} {Experimental-Result-Code}",
    ),
    AvpSpec(298, "Experimental-Result-Code", T.UNSIGNED32),
    AvpSpec(299, "Inband-Security-Id", T.UNSIGNED32),
    AvpSpec(363, "Accounting-Input-Octets", T.UNSIGNED64),
    AvpSpec(364, "Accounting-Output-Octets", T.UNSIGNED64),
    AvpSpec(
        480,
        "Accounting-Record-Type",
        T.ENUMERATED,
        enum={1: "EVENT_RECORD", 2: "START_RECORD", 3: "INTERIM_RECORD", 4: "STOP_RECORD"},
    ),
    AvpSpec(
        483,
        "Accounting-Realtime-Required",
        T.ENUMERATED,
        enum={1: "DELIVER_AND_GRANT", 2: "GRANT_AND_STORE", 3: "GRANT_AND_LOSE"},
    ),
    AvpSpec(485, "Accounting-Record-Number", T.UNSIGNED32),
)

_CAPABILITIES = (
    "{Origin-Host} {Origin-Realm} 1*{Host-IP-Address} {Vendor-Id} {Product-Name}"
    " [Origin-State-Id] *[Supported-Vendor-Id] *[Auth-Application-Id] *[Inband-Security-Id]"
    " *[Acct-Application-Id] *[Vendor-Specific-Application-Id] [Firmware-Revision] *[AVP]"
)

COMMANDS = (
    CommandSpec(
        257,
        "Capabilities-Exchange",
        0,
        "CER",
        "CEA",
        request_abnf=_CAPABILITIES,
        answer_abnf="{Result-Code} [Error-Message] [Failed-AVP] " + _CAPABILITIES,
        proxiable=False,
    ),
    CommandSpec(
        280,
        "Device-Watchdog",
        0,
        "DWR",
        "DWA",
        request_abnf="{Origin-Host} {Origin-Realm} [Origin-State-Id] *[AVP]",
        answer_abnf=(
            "{Result-Code} {Origin-Host} {Origin-Realm} [Error-Message] [Failed-AVP]"
            " [Origin-State-Id] *[AVP]"
        ),
        proxiable=False,
    ),
    CommandSpec(
        282,
        "Disconnect-Peer",
        0,
        "DPR",
        "DPA",
        request_abnf="{Origin-Host} {Origin-Realm} {Disconnect-Cause} *[AVP]",
        answer_abnf=(
            "{Result-Code} {Origin-Host} {Origin-Realm} [Error-Message] [Failed-AVP] *[AVP]"
        ),
        proxiable=False,
    ),
)
