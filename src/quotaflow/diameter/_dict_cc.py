"""RFC 4006 Diameter Credit-Control application (id 4): AVPs and CCR/CCA, RAR/RAA, ASR/ASA.

Grammars include the 3GPP TS 32.299 additions to CCR, CCA and Multiple-Services-Credit-Control
(Ro is RFC 4006 with 3GPP AVPs), so that what an SMF/PGW sends validates.
"""

from quotaflow.diameter.dictionary import AvpSpec, AvpType, CommandSpec

T = AvpType

APPLICATION_CREDIT_CONTROL = 4
APPLICATIONS = {APPLICATION_CREDIT_CONTROL: "Diameter Credit Control"}

_UNITS = (
    "[CC-Time] [CC-Money] [CC-Total-Octets] [CC-Input-Octets] [CC-Output-Octets]"
    " [CC-Service-Specific-Units]"
)

AVPS = (
    AvpSpec(411, "CC-Correlation-Id", T.OCTET_STRING, m_bit="may"),
    AvpSpec(412, "CC-Input-Octets", T.UNSIGNED64),
    AvpSpec(413, "CC-Money", T.GROUPED, abnf="{Unit-Value} [Currency-Code]"),
    AvpSpec(414, "CC-Output-Octets", T.UNSIGNED64),
    AvpSpec(415, "CC-Request-Number", T.UNSIGNED32),
    AvpSpec(
        416,
        "CC-Request-Type",
        T.ENUMERATED,
        enum={
            1: "INITIAL_REQUEST",
            2: "UPDATE_REQUEST",
            3: "TERMINATION_REQUEST",
            4: "EVENT_REQUEST",
        },
    ),
    AvpSpec(417, "CC-Service-Specific-Units", T.UNSIGNED64),
    AvpSpec(
        418,
        "CC-Session-Failover",
        T.ENUMERATED,
        enum={0: "FAILOVER_NOT_SUPPORTED", 1: "FAILOVER_SUPPORTED"},
    ),
    AvpSpec(419, "CC-Sub-Session-Id", T.UNSIGNED64),
    AvpSpec(420, "CC-Time", T.UNSIGNED32),
    AvpSpec(421, "CC-Total-Octets", T.UNSIGNED64),
    AvpSpec(
        422,
        "Check-Balance-Result",
        T.ENUMERATED,
        enum={0: "ENOUGH_CREDIT", 1: "NO_CREDIT"},
    ),
    AvpSpec(
        423,
        "Cost-Information",
        T.GROUPED,
        abnf="{Unit-Value} {Currency-Code} [Cost-Unit]",
    ),
    AvpSpec(424, "Cost-Unit", T.UTF8_STRING),
    AvpSpec(425, "Currency-Code", T.UNSIGNED32),
    AvpSpec(
        426,
        "Credit-Control",
        T.ENUMERATED,
        enum={0: "CREDIT_AUTHORIZATION", 1: "RE_AUTHORIZATION"},
    ),
    AvpSpec(
        427,
        "Credit-Control-Failure-Handling",
        T.ENUMERATED,
        enum={0: "TERMINATE", 1: "CONTINUE", 2: "RETRY_AND_TERMINATE"},
    ),
    AvpSpec(
        428,
        "Direct-Debiting-Failure-Handling",
        T.ENUMERATED,
        enum={0: "TERMINATE_OR_BUFFER", 1: "CONTINUE"},
    ),
    AvpSpec(429, "Exponent", T.INTEGER32),
    AvpSpec(
        430,
        "Final-Unit-Indication",
        T.GROUPED,
        abnf=(
            "{Final-Unit-Action} *[Restriction-Filter-Rule] *[Filter-Id] [Redirect-Server] *[AVP]"
        ),
    ),
    AvpSpec(
        431, "Granted-Service-Unit", T.GROUPED, abnf="[Tariff-Time-Change] " + _UNITS + " *[AVP]"
    ),
    AvpSpec(432, "Rating-Group", T.UNSIGNED32),
    AvpSpec(
        433,
        "Redirect-Address-Type",
        T.ENUMERATED,
        enum={0: "IPV4_ADDRESS", 1: "IPV6_ADDRESS", 2: "URL", 3: "SIP_URI"},
    ),
    AvpSpec(
        434,
        "Redirect-Server",
        T.GROUPED,
        abnf="{Redirect-Address-Type} {Redirect-Server-Address}",
    ),
    AvpSpec(435, "Redirect-Server-Address", T.UTF8_STRING),
    AvpSpec(
        436,
        "Requested-Action",
        T.ENUMERATED,
        enum={0: "DIRECT_DEBITING", 1: "REFUND_ACCOUNT", 2: "CHECK_BALANCE", 3: "PRICE_ENQUIRY"},
    ),
    AvpSpec(437, "Requested-Service-Unit", T.GROUPED, abnf=_UNITS + " *[AVP]"),
    AvpSpec(438, "Restriction-Filter-Rule", T.IP_FILTER_RULE),
    AvpSpec(439, "Service-Identifier", T.UNSIGNED32),
    AvpSpec(
        440,
        "Service-Parameter-Info",
        T.GROUPED,
        m_bit="may",
        abnf="{Service-Parameter-Type} {Service-Parameter-Value}",
    ),
    AvpSpec(441, "Service-Parameter-Type", T.UNSIGNED32, m_bit="may"),
    AvpSpec(442, "Service-Parameter-Value", T.OCTET_STRING, m_bit="may"),
    AvpSpec(
        443,
        "Subscription-Id",
        T.GROUPED,
        abnf="{Subscription-Id-Type} {Subscription-Id-Data}",
    ),
    AvpSpec(444, "Subscription-Id-Data", T.UTF8_STRING),
    AvpSpec(445, "Unit-Value", T.GROUPED, abnf="{Value-Digits} [Exponent]"),
    AvpSpec(
        446,
        "Used-Service-Unit",
        T.GROUPED,
        # TS 32.299 adds Reporting-Reason and Event-Charging-TimeStamp.
        abnf=(
            "[Tariff-Change-Usage] " + _UNITS + " *[Reporting-Reason]"
            " *[Event-Charging-TimeStamp] *[AVP]"
        ),
    ),
    AvpSpec(447, "Value-Digits", T.INTEGER64),
    AvpSpec(448, "Validity-Time", T.UNSIGNED32),
    AvpSpec(
        449,
        "Final-Unit-Action",
        T.ENUMERATED,
        enum={0: "TERMINATE", 1: "REDIRECT", 2: "RESTRICT_ACCESS"},
    ),
    AvpSpec(
        450,
        "Subscription-Id-Type",
        T.ENUMERATED,
        enum={
            0: "END_USER_E164",
            1: "END_USER_IMSI",
            2: "END_USER_SIP_URI",
            3: "END_USER_NAI",
            4: "END_USER_PRIVATE",
        },
    ),
    AvpSpec(451, "Tariff-Time-Change", T.TIME),
    AvpSpec(
        452,
        "Tariff-Change-Usage",
        T.ENUMERATED,
        enum={
            0: "UNIT_BEFORE_TARIFF_CHANGE",
            1: "UNIT_AFTER_TARIFF_CHANGE",
            2: "UNIT_INDETERMINATE",
        },
    ),
    AvpSpec(453, "G-S-U-Pool-Identifier", T.UNSIGNED32),
    AvpSpec(
        454,
        "CC-Unit-Type",
        T.ENUMERATED,
        enum={
            0: "TIME",
            1: "MONEY",
            2: "TOTAL-OCTETS",
            3: "INPUT-OCTETS",
            4: "OUTPUT-OCTETS",
            5: "SERVICE-SPECIFIC-UNITS",
        },
    ),
    AvpSpec(
        455,
        "Multiple-Services-Indicator",
        T.ENUMERATED,
        enum={0: "MULTIPLE_SERVICES_NOT_SUPPORTED", 1: "MULTIPLE_SERVICES_SUPPORTED"},
    ),
    AvpSpec(
        456,
        "Multiple-Services-Credit-Control",
        T.GROUPED,
        abnf=(
            "[Granted-Service-Unit] [Requested-Service-Unit] *[Used-Service-Unit]"
            " [Tariff-Change-Usage] *[Service-Identifier] [Rating-Group] *[G-S-U-Pool-Reference]"
            " [Validity-Time] [Result-Code] [Final-Unit-Indication]"
            # TS 32.299 additions
            " [Time-Quota-Threshold] [Volume-Quota-Threshold] [Unit-Quota-Threshold]"
            " [Quota-Holding-Time] [Quota-Consumption-Time] *[Reporting-Reason] [Trigger]"
            " [PS-Furnish-Charging-Information] [Refund-Information]"
            " *[AF-Correlation-Information] *[Envelope] [Envelope-Reporting]"
            " [Time-Quota-Mechanism] *[Service-Specific-Info] [QoS-Information] *[AVP]"
        ),
    ),
    AvpSpec(
        457,
        "G-S-U-Pool-Reference",
        T.GROUPED,
        abnf="{G-S-U-Pool-Identifier} {CC-Unit-Type} {Unit-Value}",
    ),
    AvpSpec(
        458,
        "User-Equipment-Info",
        T.GROUPED,
        m_bit="may",
        abnf="{User-Equipment-Info-Type} {User-Equipment-Info-Value}",
    ),
    AvpSpec(
        459,
        "User-Equipment-Info-Type",
        T.ENUMERATED,
        m_bit="may",
        enum={0: "IMEISV", 1: "MAC", 2: "EUI64", 3: "MODIFIED_EUI64"},
    ),
    AvpSpec(460, "User-Equipment-Info-Value", T.OCTET_STRING, m_bit="may"),
    AvpSpec(461, "Service-Context-Id", T.UTF8_STRING),
)

COMMANDS = (
    CommandSpec(
        272,
        "Credit-Control",
        APPLICATION_CREDIT_CONTROL,
        "CCR",
        "CCA",
        request_abnf=(
            "<Session-Id> {Origin-Host} {Origin-Realm} {Destination-Realm} {Auth-Application-Id}"
            " {Service-Context-Id} {CC-Request-Type} {CC-Request-Number} [Destination-Host]"
            " [User-Name] [CC-Sub-Session-Id] [Acct-Multi-Session-Id] [Origin-State-Id]"
            " [Event-Timestamp] *[Subscription-Id] [Service-Identifier] [Termination-Cause]"
            " [Requested-Service-Unit] [Requested-Action] *[Used-Service-Unit]"
            " [AoC-Request-Type] [Multiple-Services-Indicator]"
            " *[Multiple-Services-Credit-Control] *[Service-Parameter-Info] [CC-Correlation-Id]"
            " [User-Equipment-Info] *[Proxy-Info] *[Route-Record] [Service-Information] *[AVP]"
        ),
        answer_abnf=(
            "<Session-Id> {Result-Code} {Origin-Host} {Origin-Realm} {Auth-Application-Id}"
            " {CC-Request-Type} {CC-Request-Number} [User-Name] [CC-Session-Failover]"
            " [CC-Sub-Session-Id] [Acct-Multi-Session-Id] [Origin-State-Id] [Event-Timestamp]"
            " [Granted-Service-Unit] *[Multiple-Services-Credit-Control] [Cost-Information]"
            " [Final-Unit-Indication] [Check-Balance-Result] [Credit-Control-Failure-Handling]"
            " [Direct-Debiting-Failure-Handling] [Validity-Time] *[Redirect-Host]"
            " [Redirect-Host-Usage] [Redirect-Max-Cache-Time] *[Proxy-Info] *[Route-Record]"
            " *[Failed-AVP] [Low-Balance-Indication] [Remaining-Balance] [Service-Information]"
            " *[AVP]"
        ),
        proxiable=True,
    ),
    CommandSpec(
        258,
        "Re-Auth",
        APPLICATION_CREDIT_CONTROL,
        "RAR",
        "RAA",
        request_abnf=(
            "<Session-Id> {Origin-Host} {Origin-Realm} {Destination-Realm} {Destination-Host}"
            " {Auth-Application-Id} {Re-Auth-Request-Type} [User-Name] [Origin-State-Id]"
            " *[Proxy-Info] *[Route-Record] [CC-Sub-Session-Id] [G-S-U-Pool-Identifier]"
            " [Service-Identifier] [Rating-Group] *[AVP]"
        ),
        answer_abnf=(
            "<Session-Id> {Result-Code} {Origin-Host} {Origin-Realm} [User-Name]"
            " [Origin-State-Id] [Error-Message] [Error-Reporting-Host] *[Failed-AVP]"
            " *[Redirect-Host] [Redirect-Host-Usage] [Redirect-Max-Cache-Time] *[Proxy-Info]"
            " *[AVP]"
        ),
        proxiable=True,
    ),
    CommandSpec(
        274,
        "Abort-Session",
        APPLICATION_CREDIT_CONTROL,
        "ASR",
        "ASA",
        request_abnf=(
            "<Session-Id> {Origin-Host} {Origin-Realm} {Destination-Realm} {Destination-Host}"
            " {Auth-Application-Id} [User-Name] [Origin-State-Id] *[Proxy-Info] *[Route-Record]"
            " *[AVP]"
        ),
        answer_abnf=(
            "<Session-Id> {Result-Code} {Origin-Host} {Origin-Realm} [User-Name]"
            " [Origin-State-Id] [Error-Message] [Error-Reporting-Host] *[Failed-AVP]"
            " *[Redirect-Host] [Redirect-Host-Usage] [Redirect-Max-Cache-Time] *[Proxy-Info]"
            " *[AVP]"
        ),
        proxiable=True,
    ),
)
