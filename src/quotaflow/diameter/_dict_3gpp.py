"""3GPP Ro subset (vendor 10415): TS 32.299 charging AVPs, the TS 29.061 `3GPP-*` AVPs and the
TS 29.212/29.214 QoS AVPs a PGW/SMF puts in Service-Information.

Generous on purpose: gateways such as the Open5GS SMF set the M bit on most of these, and an
AVP missing here would turn every session away with 5001.
"""

from collections.abc import Mapping

from quotaflow.diameter.dictionary import (
    VENDOR_3GPP,
    VENDOR_3GPP2,
    AvpSpec,
    AvpType,
    CommandSpec,
    MBit,
)

T = AvpType

APPLICATIONS: dict[int, str] = {}
COMMANDS: tuple[CommandSpec, ...] = ()


def _v(
    code: int,
    name: str,
    avp_type: AvpType,
    m_bit: MBit = "must",
    enum: Mapping[int, str] | None = None,
    abnf: str | None = None,
) -> AvpSpec:
    return AvpSpec(code, name, avp_type, VENDOR_3GPP, m_bit, enum, abnf)


_PS_INFORMATION = (
    "[3GPP-Charging-Id] [PDN-Connection-Charging-ID] [Node-Id] [3GPP-PDP-Type]"
    " *[PDP-Address] [PDP-Address-Prefix-Length] [Dynamic-Address-Flag]"
    " [Dynamic-Address-Flag-Extension] [QoS-Information] *[SGSN-Address] *[GGSN-Address]"
    " *[TDF-IP-Address] *[SGW-Address] *[ePDG-Address] *[TWAG-Address] *[CG-Address]"
    " [Serving-Node-Type] [SGW-Change] [3GPP-IMSI-MCC-MNC] [IMSI-Unauthenticated-Flag]"
    " [3GPP-GGSN-MCC-MNC] [3GPP-NSAPI] [Called-Station-Id] [3GPP-Session-Stop-Indicator]"
    " [3GPP-Selection-Mode] [3GPP-Charging-Characteristics]"
    " [Charging-Characteristics-Selection-Mode] [3GPP-SGSN-MCC-MNC] [3GPP-MS-TimeZone]"
    " *[Charging-Rule-Base-Name] [ADC-Rule-Base-Name] [3GPP-User-Location-Info]"
    " [User-Location-Info-Time] [User-CSG-Information] *[Presence-Reporting-Area-Information]"
    " [TWAN-User-Location-Info] [3GPP-RAT-Type] [PS-Furnish-Charging-Information]"
    " [PDP-Context-Type] [Offline-Charging] *[Traffic-Data-Volumes] *[Service-Data-Container]"
    " [User-Equipment-Info] [Terminal-Information] [Start-Time] [Stop-Time]"
    " [Change-Condition] [Diagnostics] [Enhanced-Diagnostics] [Low-Priority-Indicator]"
    " [MME-Number-for-MT-SMS] [MME-Name] [MME-Realm] [CN-Operator-Selection-Entity]"
    " [Charging-Per-IP-CAN-Session-Indicator] [3GPP-PS-Data-Off-Status] *[AVP]"
)

_QOS_INFORMATION = (
    "[QoS-Class-Identifier] [Max-Requested-Bandwidth-UL] [Max-Requested-Bandwidth-DL]"
    " [Extended-Max-Requested-BW-UL] [Extended-Max-Requested-BW-DL] [Guaranteed-Bitrate-UL]"
    " [Guaranteed-Bitrate-DL] [Extended-GBR-UL] [Extended-GBR-DL] [Bearer-Identifier]"
    " [Allocation-Retention-Priority] [APN-Aggregate-Max-Bitrate-UL]"
    " [APN-Aggregate-Max-Bitrate-DL] [Extended-APN-AMBR-UL] [Extended-APN-AMBR-DL] *[AVP]"
)

AVPS = (
    # TS 29.061 RADIUS-derived 3GPP-* AVPs (Gi/SGi), carried inside PS-Information.
    _v(1, "3GPP-IMSI", T.UTF8_STRING),
    _v(2, "3GPP-Charging-Id", T.UNSIGNED32),
    _v(3, "3GPP-PDP-Type", T.ENUMERATED, enum={0: "IPv4", 1: "PPP", 2: "IPv6", 3: "IPv4v6"}),
    _v(4, "3GPP-CG-Address", T.ADDRESS),
    _v(5, "3GPP-GPRS-Negotiated-QoS-Profile", T.UTF8_STRING),
    _v(6, "3GPP-SGSN-Address", T.ADDRESS),
    _v(7, "3GPP-GGSN-Address", T.ADDRESS),
    _v(8, "3GPP-IMSI-MCC-MNC", T.UTF8_STRING),
    _v(9, "3GPP-GGSN-MCC-MNC", T.UTF8_STRING),
    _v(10, "3GPP-NSAPI", T.UTF8_STRING),
    _v(11, "3GPP-Session-Stop-Indicator", T.UTF8_STRING),
    _v(12, "3GPP-Selection-Mode", T.UTF8_STRING),
    _v(13, "3GPP-Charging-Characteristics", T.UTF8_STRING),
    _v(18, "3GPP-SGSN-MCC-MNC", T.UTF8_STRING),
    _v(20, "3GPP-IMEISV", T.OCTET_STRING),
    _v(21, "3GPP-RAT-Type", T.OCTET_STRING),
    _v(22, "3GPP-User-Location-Info", T.OCTET_STRING),
    _v(23, "3GPP-MS-TimeZone", T.OCTET_STRING),
    _v(24, "3GPP-CAMEL-Charging-Info", T.OCTET_STRING),
    _v(26, "3GPP-Negotiated-DSCP", T.OCTET_STRING),
    # TS 29.214 / 29.212 QoS AVPs.
    _v(505, "AF-Charging-Identifier", T.OCTET_STRING),
    _v(509, "Flow-Number", T.UNSIGNED32),
    _v(510, "Flows", T.GROUPED, abnf="{Media-Component-Number} *[Flow-Number] [Final-Unit-Action]"),
    _v(515, "Max-Requested-Bandwidth-DL", T.UNSIGNED32),
    _v(516, "Max-Requested-Bandwidth-UL", T.UNSIGNED32),
    _v(518, "Media-Component-Number", T.UNSIGNED32),
    _v(554, "Extended-Max-Requested-BW-DL", T.UNSIGNED32, "mustnot"),
    _v(555, "Extended-Max-Requested-BW-UL", T.UNSIGNED32, "mustnot"),
    _v(1004, "Charging-Rule-Base-Name", T.UTF8_STRING),
    _v(1016, "QoS-Information", T.GROUPED, abnf=_QOS_INFORMATION),
    _v(1020, "Bearer-Identifier", T.OCTET_STRING),
    _v(1025, "Guaranteed-Bitrate-DL", T.UNSIGNED32),
    _v(1026, "Guaranteed-Bitrate-UL", T.UNSIGNED32),
    # QCI values are open-ended (operator-specific 128-254), hence no enum table.
    _v(1028, "QoS-Class-Identifier", T.ENUMERATED),
    _v(
        1034,
        "Allocation-Retention-Priority",
        T.GROUPED,
        abnf="{Priority-Level} [Pre-emption-Capability] [Pre-emption-Vulnerability]",
    ),
    _v(1040, "APN-Aggregate-Max-Bitrate-DL", T.UNSIGNED32, "mustnot"),
    _v(1041, "APN-Aggregate-Max-Bitrate-UL", T.UNSIGNED32, "mustnot"),
    _v(1046, "Priority-Level", T.UNSIGNED32),
    _v(
        1047,
        "Pre-emption-Capability",
        T.ENUMERATED,
        enum={0: "PRE-EMPTION_CAPABILITY_ENABLED", 1: "PRE-EMPTION_CAPABILITY_DISABLED"},
    ),
    _v(
        1048,
        "Pre-emption-Vulnerability",
        T.ENUMERATED,
        enum={0: "PRE-EMPTION_VULNERABILITY_ENABLED", 1: "PRE-EMPTION_VULNERABILITY_DISABLED"},
    ),
    _v(1065, "PDN-Connection-ID", T.OCTET_STRING),
    _v(1091, "TDF-IP-Address", T.ADDRESS, "mustnot"),
    _v(1095, "ADC-Rule-Base-Name", T.UTF8_STRING),
    _v(1437, "CSG-Id", T.UNSIGNED32),
    _v(1471, "3GPP2-MEID", T.OCTET_STRING),
    _v(2848, "Extended-APN-AMBR-DL", T.UNSIGNED32, "mustnot"),
    _v(2849, "Extended-APN-AMBR-UL", T.UNSIGNED32, "mustnot"),
    _v(2850, "Extended-GBR-DL", T.UNSIGNED32, "mustnot"),
    _v(2851, "Extended-GBR-UL", T.UNSIGNED32, "mustnot"),
    # TS 32.299 Ro AVPs.
    _v(846, "CG-Address", T.ADDRESS),
    _v(847, "GGSN-Address", T.ADDRESS),
    _v(863, "Service-Specific-Data", T.UTF8_STRING),
    _v(
        865,
        "PS-Furnish-Charging-Information",
        T.GROUPED,
        abnf="{3GPP-Charging-Id} {PS-Free-Format-Data} [PS-Append-Free-Format-Data]",
    ),
    _v(866, "PS-Free-Format-Data", T.OCTET_STRING),
    _v(867, "PS-Append-Free-Format-Data", T.ENUMERATED, enum={0: "APPEND", 1: "OVERWRITE"}),
    _v(868, "Time-Quota-Threshold", T.UNSIGNED32),
    _v(869, "Volume-Quota-Threshold", T.UNSIGNED32),
    _v(
        870,
        "Trigger-Type",
        T.ENUMERATED,
        enum={
            1: "CHANGE_IN_SGSN_IP_ADDRESS",
            2: "CHANGE_IN_QOS",
            3: "CHANGE_IN_LOCATION",
            4: "CHANGE_IN_RAT",
            5: "CHANGE_IN_UE_TIMEZONE",
            10: "CHANGEINQOS_TRAFFIC_CLASS",
            11: "CHANGEINQOS_RELIABILITY_CLASS",
            12: "CHANGEINQOS_DELAY_CLASS",
            13: "CHANGEINQOS_PEAK_THROUGHPUT",
            14: "CHANGEINQOS_PRECEDENCE_CLASS",
            15: "CHANGEINQOS_MEAN_THROUGHPUT",
            16: "CHANGEINQOS_MAXIMUM_BIT_RATE_FOR_UPLINK",
            17: "CHANGEINQOS_MAXIMUM_BIT_RATE_FOR_DOWNLINK",
            18: "CHANGEINQOS_RESIDUAL_BER",
            19: "CHANGEINQOS_SDU_ERROR_RATIO",
            20: "CHANGEINQOS_TRANSFER_DELAY",
            21: "CHANGEINQOS_TRAFFIC_HANDLING_PRIORITY",
            22: "CHANGEINQOS_GUARANTEED_BIT_RATE_FOR_UPLINK",
            23: "CHANGEINQOS_GUARANTEED_BIT_RATE_FOR_DOWNLINK",
            24: "CHANGEINQOS_APN_AGGREGATE_MAXIMUM_BIT_RATE",
            30: "CHANGEINLOCATION_MCC",
            31: "CHANGEINLOCATION_MNC",
            32: "CHANGEINLOCATION_RAC",
            33: "CHANGEINLOCATION_LAC",
            34: "CHANGEINLOCATION_CellId",
            35: "CHANGEINLOCATION_TAC",
            36: "CHANGEINLOCATION_ECGI",
            40: "CHANGE_IN_MEDIA_COMPOSITION",
            50: "CHANGE_IN_PARTICIPANTS_NMB",
            51: "CHANGE_IN_THRSHLD_OF_PARTICIPANTS_NMB",
            52: "CHANGE_IN_USER_PARTICIPATING_TYPE",
            60: "CHANGE_IN_SERVICE_CONDITION",
            61: "CHANGE_IN_SERVING_NODE",
            62: "CHANGE_IN_ACCESS_FOR_A_SERVICE_DATA_FLOW",
            70: "CHANGE_IN_USER_CSG_INFORMATION",
            71: "CHANGE_IN_HYBRID_SUBSCRIBED_USER_CSG_INFORMATION",
            72: "CHANGE_IN_HYBRID_UNSUBSCRIBED_USER_CSG_INFORMATION",
            73: "CHANGE_OF_UE_PRESENCE_IN_PRESENCE_REPORTING_AREA",
        },
    ),
    _v(871, "Quota-Holding-Time", T.UNSIGNED32),
    _v(
        872,
        "Reporting-Reason",
        T.ENUMERATED,
        enum={
            0: "THRESHOLD",
            1: "QHT",
            2: "FINAL",
            3: "QUOTA_EXHAUSTED",
            4: "VALIDITY_TIME",
            5: "OTHER_QUOTA_TYPE",
            6: "RATING_CONDITION_CHANGE",
            7: "FORCED_REAUTHORISATION",
            8: "POOL_EXHAUSTED",
            9: "UNUSED_QUOTA_TIMER",
        },
    ),
    _v(
        873,
        "Service-Information",
        T.GROUPED,
        abnf="*[Subscription-Id] [PS-Information] *[AVP]",
    ),
    _v(874, "PS-Information", T.GROUPED, abnf=_PS_INFORMATION),
    _v(881, "Quota-Consumption-Time", T.UNSIGNED32),
    _v(1226, "Unit-Quota-Threshold", T.UNSIGNED32, "may"),
    _v(1227, "PDP-Address", T.ADDRESS, "may"),
    _v(1228, "SGSN-Address", T.ADDRESS, "may"),
    _v(1247, "PDP-Context-Type", T.ENUMERATED, "may", enum={0: "PRIMARY", 1: "SECONDARY"}),
    _v(
        1249,
        "Service-Specific-Info",
        T.GROUPED,
        "may",
        abnf="[Service-Specific-Data] [Service-Specific-Type]",
    ),
    _v(1257, "Service-Specific-Type", T.UNSIGNED32, "may"),
    _v(1258, "Event-Charging-TimeStamp", T.TIME, "may"),
    _v(1264, "Trigger", T.GROUPED, "may", abnf="*[Trigger-Type]"),
    _v(
        1266,
        "Envelope",
        T.GROUPED,
        "may",
        abnf=(
            "{Envelope-Start-Time} [Envelope-End-Time] {CC-Total-Octets} [CC-Input-Octets]"
            " [CC-Output-Octets] [CC-Service-Specific-Units] *[AVP]"
        ),
    ),
    _v(1267, "Envelope-End-Time", T.TIME, "may"),
    _v(
        1268,
        "Envelope-Reporting",
        T.ENUMERATED,
        "may",
        enum={
            0: "DO_NOT_REPORT_ENVELOPES",
            1: "REPORT_ENVELOPES",
            2: "REPORT_ENVELOPES_WITH_VOLUME",
            3: "REPORT_ENVELOPES_WITH_EVENTS",
            4: "REPORT_ENVELOPES_WITH_VOLUME_AND_EVENTS",
        },
    ),
    _v(1269, "Envelope-Start-Time", T.TIME, "may"),
    _v(
        1270,
        "Time-Quota-Mechanism",
        T.GROUPED,
        "may",
        abnf="{Time-Quota-Type} {Base-Time-Interval}",
    ),
    _v(
        1271,
        "Time-Quota-Type",
        T.ENUMERATED,
        "may",
        enum={0: "DISCRETE_TIME_PERIOD", 1: "CONTINUOUS_TIME_PERIOD"},
    ),
    _v(1265, "Base-Time-Interval", T.UNSIGNED32, "may"),
    _v(
        1276,
        "AF-Correlation-Information",
        T.GROUPED,
        "may",
        abnf="{AF-Charging-Identifier} *[Flows]",
    ),
    _v(
        1278,
        "Offline-Charging",
        T.GROUPED,
        "may",
        abnf=(
            "[Quota-Consumption-Time] [Time-Quota-Mechanism] [Envelope-Reporting]"
            " *[Multiple-Services-Credit-Control] *[AVP]"
        ),
    ),
    _v(
        1401,
        "Terminal-Information",
        T.GROUPED,
        abnf="[IMEI] [3GPP2-MEID] [Software-Version] *[AVP]",
    ),
    _v(1402, "IMEI", T.UTF8_STRING),
    _v(1403, "Software-Version", T.UTF8_STRING),
    _v(1645, "MME-Number-for-MT-SMS", T.OCTET_STRING, "may"),
    _v(2020, "Low-Balance-Indication", T.ENUMERATED, "may", enum={0: "NOT-APPLICABLE", 1: "YES"}),
    _v(2021, "Remaining-Balance", T.GROUPED, "may", abnf="{Unit-Value} {Currency-Code}"),
    _v(2022, "Refund-Information", T.OCTET_STRING, "may"),
    _v(
        2037,
        "Change-Condition",
        T.ENUMERATED,
        "may",
        enum={
            0: "NORMAL_RELEASE",
            1: "ABNORMAL_RELEASE",
            2: "QOS_CHANGE",
            3: "VOLUME_LIMIT",
            4: "TIME_LIMIT",
            5: "SERVING_NODE_CHANGE",
            6: "SERVING_NODE_PLMN_CHANGE",
            7: "USER_LOCATION_CHANGE",
            8: "RAT_CHANGE",
            9: "UE_TIMEZONE_CHANGE",
            10: "TARIFF_TIME_CHANGE",
            11: "SERVICE_IDLED_OUT",
            12: "SERVICE_SPECIFIC_UNIT_LIMIT",
            13: "MAX_NUMBER_OF_CHANGES_IN_CHARGING_CONDITIONS",
            14: "CGI_SAI_CHANGE",
            15: "RAI_CHANGE",
            16: "ECGI_CHANGE",
            17: "TAI_CHANGE",
            18: "DIAGNOSTICS",
        },
    ),
    _v(2038, "Change-Time", T.TIME, "may"),
    # Integer32 codes from TS 29.061; the value set grows, so no table.
    _v(2039, "Diagnostics", T.INTEGER32, "may"),
    _v(
        2040,
        "Service-Data-Container",
        T.GROUPED,
        "may",
        abnf=(
            "[AF-Correlation-Information] [Charging-Rule-Base-Name] [Accounting-Input-Octets]"
            " [Accounting-Output-Octets] [Local-Sequence-Number] [QoS-Information]"
            " [Rating-Group] [Change-Time] [Service-Identifier] [Service-Specific-Info]"
            " [ADC-Rule-Base-Name] [SGSN-Address] [Time-First-Usage] [Time-Last-Usage]"
            " [Time-Usage] *[Change-Condition] [3GPP-User-Location-Info] [3GPP2-BSID]"
            " [UWAN-User-Location-Info] [TWAN-User-Location-Info] [Sponsor-Identity]"
            " [Application-Service-Provider-Identity] *[Presence-Reporting-Area-Information]"
            " [Presence-Reporting-Area-Status] [User-CSG-Information] [3GPP-RAT-Type]"
            " [Related-Change-Condition-Information] [Serving-PLMN-Rate-Control]"
            " [APN-Rate-Control] [3GPP-PS-Data-Off-Status] *[AVP]"
        ),
    ),
    _v(2041, "Start-Time", T.TIME, "may"),
    _v(2042, "Stop-Time", T.TIME, "may"),
    _v(2043, "Time-First-Usage", T.TIME, "may"),
    _v(2044, "Time-Last-Usage", T.TIME, "may"),
    _v(2045, "Time-Usage", T.UNSIGNED32, "may"),
    _v(
        2046,
        "Traffic-Data-Volumes",
        T.GROUPED,
        "may",
        abnf=(
            "[QoS-Information] [Accounting-Input-Octets] [Accounting-Output-Octets]"
            " [Change-Condition] [Change-Time] [3GPP-User-Location-Info]"
            " [UWAN-User-Location-Info] [3GPP-Charging-Id] [Presence-Reporting-Area-Status]"
            " [User-CSG-Information] [3GPP-RAT-Type] [Access-Availability-Change-Reason]"
            " [Related-Change-Condition-Information] [Diagnostics] [Enhanced-Diagnostics]"
            " [CP-CIoT-EPS-Optimisation-Indicator] [Serving-PLMN-Rate-Control] *[AVP]"
        ),
    ),
    _v(
        2047,
        "Serving-Node-Type",
        T.ENUMERATED,
        "may",
        enum={0: "SGSN", 1: "PMIPSGW", 2: "GTPSGW", 3: "ePDG", 4: "hSGW", 5: "MME", 6: "TWAN"},
    ),
    _v(2050, "PDN-Connection-Charging-ID", T.UNSIGNED32, "may"),
    _v(2051, "Dynamic-Address-Flag", T.ENUMERATED, "may", enum={0: "STATIC", 1: "DYNAMIC"}),
    _v(
        2055,
        "AoC-Request-Type",
        T.ENUMERATED,
        "may",
        enum={0: "AOC_NOT_REQUESTED", 1: "AOC_FULL", 2: "AOC_COST_ONLY", 3: "AOC_TARIFF_ONLY"},
    ),
    _v(2063, "Local-Sequence-Number", T.UNSIGNED32, "may"),
    _v(2064, "Node-Id", T.UTF8_STRING, "may"),
    _v(
        2065,
        "SGW-Change",
        T.ENUMERATED,
        enum={0: "ACR_START_NOT_DUE_TO_SGW_CHANGE", 1: "ACR_START_DUE_TO_SGW_CHANGE"},
    ),
    _v(
        2066,
        "Charging-Characteristics-Selection-Mode",
        T.ENUMERATED,
        enum={
            0: "SERVING_NODE_SUPPLIED",
            1: "SUBSCRIPTION_SPECIFIC",
            2: "APN_SPECIFIC",
            3: "HOME_DEFAULT",
            4: "ROAMING_DEFAULT",
            5: "VISITING_DEFAULT",
        },
    ),
    _v(2067, "SGW-Address", T.ADDRESS, "may"),
    _v(
        2068,
        "Dynamic-Address-Flag-Extension",
        T.ENUMERATED,
        "may",
        enum={0: "STATIC", 1: "DYNAMIC"},
    ),
    _v(
        2308,
        "IMSI-Unauthenticated-Flag",
        T.ENUMERATED,
        "may",
        enum={0: "AUTHENTICATED", 1: "UNAUTHENTICATED"},
    ),
    _v(2317, "CSG-Access-Mode", T.ENUMERATED, "may", enum={0: "CLOSED_MODE", 1: "HYBRID_MODE"}),
    _v(
        2318,
        "CSG-Membership-Indication",
        T.ENUMERATED,
        "may",
        enum={0: "NOT_CSG_MEMBER", 1: "CSG_MEMBER"},
    ),
    _v(
        2319,
        "User-CSG-Information",
        T.GROUPED,
        "may",
        abnf="{CSG-Id} {CSG-Access-Mode} [CSG-Membership-Indication]",
    ),
    _v(2402, "MME-Name", T.DIAMETER_IDENTITY, "may"),
    _v(2408, "MME-Realm", T.DIAMETER_IDENTITY, "may"),
    _v(2602, "Low-Priority-Indicator", T.ENUMERATED, "may", enum={0: "NO", 1: "YES"}),
    _v(2606, "PDP-Address-Prefix-Length", T.UNSIGNED32),
    _v(2812, "User-Location-Info-Time", T.TIME, "may"),
    _v(2819, "RAN-NAS-Release-Cause", T.OCTET_STRING, "may"),
    _v(2821, "Presence-Reporting-Area-Identifier", T.OCTET_STRING),
    _v(
        2822,
        "Presence-Reporting-Area-Information",
        T.GROUPED,
        abnf="[Presence-Reporting-Area-Identifier] [Presence-Reporting-Area-Status] *[AVP]",
    ),
    _v(
        2823,
        "Presence-Reporting-Area-Status",
        T.ENUMERATED,
        enum={0: "IN_AREA", 1: "OUT_OF_AREA", 2: "INACTIVE"},
    ),
    _v(2833, "Access-Availability-Change-Reason", T.UNSIGNED32, "may"),
    _v(1524, "SSID", T.UTF8_STRING),
    _v(2716, "BSSID", T.UTF8_STRING, "may"),
    _v(
        2714,
        "TWAN-User-Location-Info",
        T.GROUPED,
        abnf="{SSID} [BSSID] *[AVP]",
    ),
    _v(3421, "CN-Operator-Selection-Entity", T.ENUMERATED, enum={0: "UE", 1: "NETWORK"}),
    _v(3425, "ePDG-Address", T.ADDRESS),
    _v(3901, "Enhanced-Diagnostics", T.GROUPED, abnf="[RAN-NAS-Release-Cause] *[AVP]"),
    _v(3903, "TWAG-Address", T.ADDRESS),
    _v(3918, "UWAN-User-Location-Info", T.GROUPED, abnf="*[AVP]"),
    _v(3925, "Related-Change-Condition-Information", T.GROUPED, abnf="*[AVP]"),
    _v(3930, "CP-CIoT-EPS-Optimisation-Indicator", T.ENUMERATED, enum={0: "NOT_APPLY", 1: "APPLY"}),
    _v(3933, "APN-Rate-Control", T.GROUPED, abnf="*[AVP]"),
    _v(
        4310,
        "Serving-PLMN-Rate-Control",
        T.GROUPED,
        abnf="[Uplink-Rate-Limit] [Downlink-Rate-Limit] *[AVP]",
    ),
    _v(4311, "Uplink-Rate-Limit", T.UNSIGNED32),
    _v(4312, "Downlink-Rate-Limit", T.UNSIGNED32),
    _v(
        4400,
        "Charging-Per-IP-CAN-Session-Indicator",
        T.ENUMERATED,
        enum={0: "INACTIVE", 1: "ACTIVE"},
    ),
    _v(4406, "3GPP-PS-Data-Off-Status", T.ENUMERATED, enum={0: "ACTIVE", 1: "INACTIVE"}),
    _v(531, "Sponsor-Identity", T.UTF8_STRING, "mustnot"),
    _v(532, "Application-Service-Provider-Identity", T.UTF8_STRING, "mustnot"),
    # A 3GPP2 AVP (vendor 5535) that TS 32.299 places in PS-Information.
    AvpSpec(9010, "3GPP2-BSID", T.UTF8_STRING, VENDOR_3GPP2, "may"),
)
