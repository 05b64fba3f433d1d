import CLinuxKVM
import Foundation
import GuestMemory
import KVMPlatform
import Synchronization
import Testing
@testable import KVM
@testable import SoftKVM

// The local APIC on the host's /dev/kvm and on SoftKVM: the register page
// KVM_GET_LAPIC gives after the same requests and guest code, and guests
// whose interrupt handlers run when the IOAPIC, an MSI, an irqfd, the APIC
// timer, another vCPU or KVM_NMI interrupt them. Guests end with an `out`
// to 0xF1: with an in-kernel irqchip, HLT blocks in the kernel.

/// The ports a guest wrote, in order, until it wrote 0xF1 (or gave an exit
/// that is not port output). Reads are answered with 0; `afterEach` sees
/// every exit before the vCPU runs on.
func portTrace(_ vcpu: VCPU, maxExits: Int = 30, seconds: Double = 10,
               afterEach: (VCPUExit) throws -> Void = { _ in }) throws -> [String] {
    var trace: [String] = []
    for _ in 0..<maxExits {
        let exit = try vcpu.runWithDeadline(seconds: seconds)
        try afterEach(exit)
        guard case .io(let io) = exit else {
            trace.append("\(exit)")
            return trace
        }
        trace.append(String(format: "%02x", io.port))
        if io.port == 0xF1 { return trace }
        if io.direction == .in { try vcpu.setInput(repeatElement(0, count: io.length)) }
    }
    return trace
}

/// The register page with the current count (0x390), which depends on when it is read, zeroed.
func lapicPage(_ vcpu: VCPU) throws -> [UInt8] {
    var bytes = try vcpu.lapic().bytes
    for i in 0x390..<0x394 { bytes[i] = 0 }
    return bytes
}

func hexDump(_ bytes: [UInt8]) -> String {
    stride(from: 0, to: bytes.count, by: 16).compactMap { offset -> String? in
        let word = bytes[offset..<offset + 4].reversed().map { String(format: "%02x", $0) }.joined()
        let rest = bytes[offset + 4..<offset + 16].contains { $0 != 0 } ? " (+)" : ""
        return word == "00000000" && rest.isEmpty ? nil : String(format: "%03x:", offset) + word + rest
    }.joined(separator: " ")
}

extension VCPU {
    /// KVM_GET_TSC_KHZ.
    func tscFrequency() throws -> Int32 { try handle.call(.getTSCKhz, value: 0) }
    /// KVM_SET_TSC_KHZ.
    func setTSCFrequency(_ khz: UInt) throws { _ = try handle.call(.setTSCKhz, value: khz) }

    /// KVM_SET_MSRS as it is: how many of `entries` were written.
    func writeMSRs(_ entries: [(UInt32, UInt64)]) throws -> Int32 {
        let buffer = FlexibleArrayBuffer<kvm_msrs, kvm_msr_entry>(capacity: entries.count)
        buffer.header.pointee.nmsrs = UInt32(entries.count)
        for (slot, entry) in entries.enumerated() {
            buffer.entries[slot] = kvm_msr_entry(index: entry.0, reserved: 0, data: entry.1)
        }
        return try handle.call(.setMSRs, buffer.raw)
    }

    /// One MSR through KVM_GET_MSRS, nil when refused.
    func msr(_ index: UInt32) throws -> UInt64? { try readMSRs([index]).entries.first?.data }
}

extension VCPUExit {
    /// The port of an `out`, nil for any other exit.
    var outPort: UInt16? {
        guard case .io(let io) = self, io.direction == .out else { return nil }
        return io.port
    }
}

extension LAPICState {
    subscript(offset: Int) -> UInt32 {
        get { register(at: offset) }
        set { setRegister(at: offset, to: newValue) }
    }
}

/// Guest code, each written at its address.
enum APICGuest {
    static let enableAPIC: [UInt8] = [0xC7, 0x05, 0xF0, 0x00, 0xE0, 0xFE, 0xFF, 0x01, 0x00, 0x00]  // mov [0xfee000f0], 0x1ff

    /// Programs the APIC's registers through its page, sends itself two
    /// IPIs with IF clear, and reads registers back into EAX..EDI.
    static let registers: [UInt8] = [
        0xC7, 0x05, 0xF0, 0x00, 0xE0, 0xFE, 0xFF, 0x01, 0x00, 0x00,  // mov [0xfee000f0], 0x1ff    SPIV
        0xC7, 0x05, 0x80, 0x00, 0xE0, 0xFE, 0x20, 0x00, 0x00, 0x00,  // mov [0xfee00080], 0x20     TPR
        0xC7, 0x05, 0xD0, 0x00, 0xE0, 0xFE, 0x00, 0x00, 0x00, 0x03,  // mov [0xfee000d0], 0x3000000  LDR
        0xC7, 0x05, 0xE0, 0x00, 0xE0, 0xFE, 0xFF, 0xFF, 0xFF, 0x0F,  // mov [0xfee000e0], 0xfffffff  DFR cluster
        0xC7, 0x05, 0x50, 0x03, 0xE0, 0xFE, 0x00, 0x87, 0x00, 0x00,  // mov [0xfee00350], 0x8700   LINT0 level ExtINT
        0xC7, 0x05, 0x60, 0x03, 0xE0, 0xFE, 0x00, 0x04, 0x00, 0x00,  // mov [0xfee00360], 0x400    LINT1 NMI
        0xC7, 0x05, 0x70, 0x03, 0xE0, 0xFE, 0x33, 0x00, 0x00, 0x00,  // mov [0xfee00370], 0x33     error
        0xC7, 0x05, 0xE0, 0x03, 0xE0, 0xFE, 0x03, 0x00, 0x00, 0x00,  // mov [0xfee003e0], 0x3      divide by 16
        0xC7, 0x05, 0x20, 0x03, 0xE0, 0xFE, 0x45, 0x00, 0x01, 0x00,  // mov [0xfee00320], 0x10045  timer, masked
        0xC7, 0x05, 0x10, 0x03, 0xE0, 0xFE, 0x00, 0x00, 0x00, 0x01,  // mov [0xfee00310], 0x1000000  ICR2
        0xC7, 0x05, 0x00, 0x03, 0xE0, 0xFE, 0x51, 0x00, 0x04, 0x00,  // mov [0xfee00300], 0x40051  self, fixed, edge
        0xC7, 0x05, 0x00, 0x03, 0xE0, 0xFE, 0x52, 0xC0, 0x04, 0x00,  // mov [0xfee00300], 0x4c052  self, fixed, level
        0xA1, 0xA0, 0x00, 0xE0, 0xFE,        // mov eax, [0xfee000a0]   PPR
        0x8B, 0x1D, 0x30, 0x00, 0xE0, 0xFE,  // mov ebx, [0xfee00030]   version
        0x8B, 0x0D, 0x20, 0x02, 0xE0, 0xFE,  // mov ecx, [0xfee00220]   IRR 0x40-0x5f
        0x8B, 0x15, 0x20, 0x00, 0xE0, 0xFE,  // mov edx, [0xfee00020]   ID
        0x8B, 0x35, 0xA0, 0x01, 0xE0, 0xFE,  // mov esi, [0xfee001a0]   TMR 0x40-0x5f
        0x8B, 0x3D, 0x00, 0x03, 0xE0, 0xFE,  // mov edi, [0xfee00300]   ICR
        0xE6, 0xF1,                          // out 0xf1, al
    ]

    /// Enables the APIC, sends IOAPIC pin 16 to vector 0x35 (edge) and pin
    /// 17 to vector 0x36 (level), both fixed to APIC 0; `out 0x10` (where
    /// the test raises something), then STI; HLT until it arrives.
    static let ioapicThenWait: [UInt8] = [
        0xC7, 0x05, 0xF0, 0x00, 0xE0, 0xFE, 0xFF, 0x01, 0x00, 0x00,  // mov [0xfee000f0], 0x1ff
        0xC7, 0x05, 0x00, 0x00, 0xC0, 0xFE, 0x30, 0x00, 0x00, 0x00,  // mov [0xfec00000], 0x30
        0xC7, 0x05, 0x10, 0x00, 0xC0, 0xFE, 0x35, 0x00, 0x00, 0x00,  // mov [0xfec00010], 0x35
        0xC7, 0x05, 0x00, 0x00, 0xC0, 0xFE, 0x31, 0x00, 0x00, 0x00,  // mov [0xfec00000], 0x31
        0xC7, 0x05, 0x10, 0x00, 0xC0, 0xFE, 0x00, 0x00, 0x00, 0x00,  // mov [0xfec00010], 0x0
        0xC7, 0x05, 0x00, 0x00, 0xC0, 0xFE, 0x32, 0x00, 0x00, 0x00,  // mov [0xfec00000], 0x32
        0xC7, 0x05, 0x10, 0x00, 0xC0, 0xFE, 0x36, 0x80, 0x00, 0x00,  // mov [0xfec00010], 0x8036
        0xC7, 0x05, 0x00, 0x00, 0xC0, 0xFE, 0x33, 0x00, 0x00, 0x00,  // mov [0xfec00000], 0x33
        0xC7, 0x05, 0x10, 0x00, 0xC0, 0xFE, 0x00, 0x00, 0x00, 0x00,  // mov [0xfec00010], 0x0
        0xE6, 0x10,  // out 0x10, al
        0xFB,        // sti
        0xF4,        // hlt
        0xFA,        // cli
        0xE6, 0xF1,  // out 0xf1, al
    ]

    /// `out port, al`; EOI; back to the interrupted instruction with IF
    /// clear. Not IRETD: KVM's emulator, which runs CPL-0 code on kvm_pvm,
    /// has only real mode's IRET.
    static func handler(port: UInt8) -> [UInt8] {
        [0xE6, port,                                                  // out port, al
         0xC7, 0x05, 0xB0, 0x00, 0xE0, 0xFE, 0x00, 0x00, 0x00, 0x00,  // mov [0xfee000b0], 0x0
         0x58,                                                        // pop eax
         0x83, 0xC4, 0x08,                                            // add esp, 8
         0xFF, 0xE0]                                                  // jmp eax
    }

    /// The timer: LVTT from [0x3008], `out 0x10`, the count from [0x300c]
    /// (or, in TSC-deadline mode, IA32_TSC_DEADLINE = TSC + [0x3010]), then
    /// HLT until the handler has counted [0x3004] interrupts at [0x3000].
    static let timer: [UInt8] = [
        0xC7, 0x05, 0xF0, 0x00, 0xE0, 0xFE, 0xFF, 0x01, 0x00, 0x00,  // mov [0xfee000f0], 0x1ff
        0xC7, 0x05, 0xE0, 0x03, 0xE0, 0xFE, 0x0B, 0x00, 0x00, 0x00,  // mov [0xfee003e0], 0xb   divide by 1
        0xA1, 0x08, 0x30, 0x00, 0x00,        // mov eax, [0x3008]
        0xA3, 0x20, 0x03, 0xE0, 0xFE,        // mov [0xfee00320], eax
        0xE6, 0x10,                          // out 0x10, al
        0xA1, 0x0C, 0x30, 0x00, 0x00,        // mov eax, [0x300c]
        0xA3, 0x80, 0x03, 0xE0, 0xFE,        // mov [0xfee00380], eax
        0xA1, 0x08, 0x30, 0x00, 0x00,        // mov eax, [0x3008]
        0x25, 0x00, 0x00, 0x04, 0x00,        // and eax, 0x40000
        0x74, 0x15,                          // je wait
        0x0F, 0x31,                          // rdtsc
        0x03, 0x05, 0x10, 0x30, 0x00, 0x00,  // add eax, [0x3010]
        0x13, 0x15, 0x14, 0x30, 0x00, 0x00,  // adc edx, [0x3014]
        0xB9, 0xE0, 0x06, 0x00, 0x00,        // mov ecx, 0x6e0
        0x0F, 0x30,                          // wrmsr
        0xFB,                                // wait: sti
        0xF4,                                // hlt
        0xFA,                                // cli
        0xA1, 0x00, 0x30, 0x00, 0x00,        // mov eax, [0x3000]
        0x3B, 0x05, 0x04, 0x30, 0x00, 0x00,  // cmp eax, [0x3004]
        0x72, 0xF0,                          // jb wait
        0xC7, 0x05, 0x20, 0x03, 0xE0, 0xFE, 0x40, 0x00, 0x01, 0x00,  // mov [0xfee00320], 0x10040   masked
        0xE6, 0xF1,                          // out 0xf1, al
    ]

    /// Counts at [0x3000]; EOI; back with IF clear (as `handler`).
    static let timerHandler: [UInt8] = [
        0xFF, 0x05, 0x00, 0x30, 0x00, 0x00,                          // inc dword [0x3000]
        0xC7, 0x05, 0xB0, 0x00, 0xE0, 0xFE, 0x00, 0x00, 0x00, 0x00,  // mov [0xfee000b0], 0x0
        0x58,                                                        // pop eax
        0x83, 0xC4, 0x08,                                            // add esp, 8
        0xFF, 0xE0,                                                  // jmp eax
    ]

    /// The BSP: INIT and SIPI (vector 8: 0x8000) to APIC 1, `out 0x10`,
    /// then a fixed IPI (vector 0x50) to APIC 1.
    static let bootstrap: [UInt8] = [
        0xC7, 0x05, 0xF0, 0x00, 0xE0, 0xFE, 0xFF, 0x01, 0x00, 0x00,  // mov [0xfee000f0], 0x1ff
        0xC7, 0x05, 0x10, 0x03, 0xE0, 0xFE, 0x00, 0x00, 0x00, 0x01,  // mov [0xfee00310], 0x1000000
        0xC7, 0x05, 0x00, 0x03, 0xE0, 0xFE, 0x00, 0x45, 0x00, 0x00,  // mov [0xfee00300], 0x4500   INIT
        0xC7, 0x05, 0x00, 0x03, 0xE0, 0xFE, 0x08, 0x46, 0x00, 0x00,  // mov [0xfee00300], 0x4608   SIPI
        0xE6, 0x10,                                                  // out 0x10, al
        0xC7, 0x05, 0x00, 0x03, 0xE0, 0xFE, 0x50, 0x40, 0x00, 0x00,  // mov [0xfee00300], 0x4050   fixed 0x50
        0xE6, 0xF1,                                                  // out 0xf1, al
    ]

    /// The AP at 0x8000, in real mode: `out 0x44`, STI; HLT, `out 0x46`.
    static let application: [UInt8] = [
        0xB0, 0x42,  // mov al, 0x42
        0xE6, 0x44,  // out 0x44, al
        0xFB,        // sti
        0xF4,        // hlt
        0xE6, 0x46,  // out 0x46, al
        0xEB, 0xFE,  // jmp $
    ]

    /// Real mode: `out 0x10`, HLT, `out 0xf1`.
    static let haltAfterOut: [UInt8] = [0xE6, 0x10, 0xF4, 0xE6, 0xF1]
    /// Real mode: `out 0x10`, NOP, `out 0xf1`.
    static let nopAfterOut: [UInt8] = [0xE6, 0x10, 0x90, 0xE6, 0xF1]
    /// The NMI handler (real mode): `out 0x32`, `out 0x33`, IRET.
    static let nmiHandler: [UInt8] = [0xE6, 0x32, 0xE6, 0x33, 0xCF]
}

@Suite("The local APIC on the host's /dev/kvm and on SoftKVM", .enabled(if: HostKVM.isAvailable))
struct LAPICDifferentialTests {
    @Test func registerPageOfNewVCPUsAgrees() throws {
        func pages(_ backend: Backend) throws -> [[UInt8]] {
            let vm = try backend.hypervisor().createVM()
            try vm.createIrqchip()
            let vcpus = [try vm.createVCPU(id: 0), try vm.createVCPU(id: 1), try vm.createVCPU(id: 5)]
            return try vcpus.map { try $0.lapic().bytes }
        }
        let host = try pages(.host)
        let soft = try pages(.soft)
        #expect(host[0][0x30] == 0x14 && host[0][0x32] == 0x05)
        for (i, (h, s)) in zip(host, soft).enumerated() {
            #expect(s == h, "vCPU \(i): host \(hexDump(h)), SoftKVM \(hexDump(s))")
        }
    }

    @Test func lapicRequestsWithoutAnIrqchipAreRefused() throws {
        try expectSameOnBothBackends { hypervisor in
            let vcpu = try hypervisor.createVM().createVCPU(id: 0)
            return [
                ("get", outcome { () throws(KVMError) in _ = try vcpu.lapic() }),
                ("set", outcome { () throws(KVMError) in try vcpu.setLAPIC(LAPICState()) }),
            ]
        }
    }

    /// KVM_SET_LAPIC takes the page as given, then fixes the version and
    /// the processor priority, and derives the software enable from SPIV.
    @Test func setLAPICPageReadsBackAsTheKernelKeepsIt() throws {
        func run(_ backend: Backend) throws -> [String] {
            let vm = try backend.hypervisor().createVM()
            try vm.createIrqchip()
            let vcpu = try vm.createVCPU(id: 2)
            var state = try vcpu.lapic()
            state[APIC_SPIV] = 0x13F
            state[APIC_TASKPRI] = 0x47
            state[APIC_LVR] = 0xDEAD
            state[APIC_LDR] = 0x0500_0000
            state[APIC_ISR + 0x30] = 0x10  // vector 0x64 in service
            state[APIC_IRR + 0x70] = 0x8000_0000  // vector 0xff requested
            state[APIC_TMR] = 0x4000_0000
            state[APIC_LVT1] = 0x400
            state[APIC_ICR] = 0x0004_4031
            state.bytes[0x3F4] = 0x77  // not a register: kept as given
            try vcpu.setLAPIC(state)
            let after = try vcpu.lapic()
            return [hexDump(after.bytes), "\(try vcpu.mpState())"]
        }
        let host = try run(.host)
        let soft = try run(.soft)
        #expect(soft == host)
    }

    /// A guest programs its APIC through the page and sends itself IPIs
    /// with IF clear: the same registers read back and the same page.
    @Test func guestProgrammedRegistersAgree() throws {
        func run(_ backend: Backend) throws -> ([String], Registers, [UInt8]) {
            let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: APICGuest.registers, irqchip: true)
            try enterProtectedMode(guest, gates: [])
            let trace = try portTrace(guest.vcpu)
            return (trace, try guest.vcpu.registers(), try lapicPage(guest.vcpu))
        }
        let host = try run(.host)
        let soft = try run(.soft)
        #expect(host.0 == ["f1"])
        #expect(host.1.rax == 0x20)
        #expect(host.1.rbx == 0x50014)
        #expect(host.1.rcx == 0x6_0000)
        #expect(host.1.rsi == 0x4_0000)
        #expect(host.1.rdi == 0x4_C052)
        #expect(soft.0 == host.0)
        #expect(soft.1 == host.1)
        #expect(soft.2 == host.2, "host \(hexDump(host.2)), SoftKVM \(hexDump(soft.2))")
    }

    enum Source: String, CaseIterable, CustomTestStringConvertible {
        case ioapicPin, msi, msiRouteIrqfd
        var testDescription: String { rawValue }
    }

    /// An edge interrupt from an IOAPIC pin, an MSI or an irqfd on an MSI
    /// route wakes the halted guest; its handler runs (the first `out`)
    /// and returns after HLT; the APIC ends with nothing pending.
    @Test(arguments: Source.allCases)
    func interruptReachesTheGuestHandler(_ source: Source) throws {
        func run(_ backend: Backend) throws -> ([String], [UInt8], [UInt8], String) {
            let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: APICGuest.ioapicThenWait, irqchip: true)
            try guest.memory.write(APICGuest.handler(port: 0x30), at: 0x2000)
            try enterProtectedMode(guest, gates: [(0x35, 0x2000, 0x8E)])
            let eventFD = try EventFD(nonBlocking: true)
            if source == .msiRouteIrqfd {
                try guest.vm.setGSIRouting([.msi(gsi: 30, address: 0xFEE0_0000, data: 0x35)])
                try guest.vm.registerIRQFD(eventFD, gsi: 30)
            }
            var delivered = ""
            let trace = try portTrace(guest.vcpu) { exit in
                guard exit.outPort == 0x10 else { return }
                switch source {
                case .ioapicPin:
                    try guest.vm.setIRQLine(16, level: true)
                    try guest.vm.setIRQLine(16, level: false)
                case .msi:
                    delivered = outcome { () throws(KVMError) in try guest.vm.signalMSI(address: 0xFEE0_0000, data: 0x35) }.description
                case .msiRouteIrqfd:
                    try eventFD.signal()
                }
            }
            return (trace, try lapicPage(guest.vcpu), try guest.vm.irqchipState(.ioapic).bytes, delivered)
        }
        let host = try run(.host)
        let soft = try run(.soft)
        #expect(host.0 == ["10", "30", "f1"])
        #expect(soft.0 == host.0)
        #expect(soft.1 == host.1, "host \(hexDump(host.1)), SoftKVM \(hexDump(soft.1))")
        #expect(soft.2 == host.2)
        #expect(soft.3 == host.3)
    }

    enum TimerMode: String, CaseIterable, CustomTestStringConvertible {
        case oneShot, periodic, tscDeadline
        var testDescription: String { rawValue }
    }

    /// The APIC timer interrupts a halted guest: once 20 ms after a
    /// one-shot count or a TSC deadline, five times 2 ms apart when
    /// periodic. The bounds are generous; the handler's count is exact.
    @Test(arguments: TimerMode.allCases)
    func timerInterruptsTheHaltedGuest(_ mode: TimerMode) throws {
        func run(_ backend: Backend) throws -> ([String], UInt32, Double) {
            let hypervisor = try backend.hypervisor()
            let guest = try RealModeGuest(hypervisor: hypervisor, code: APICGuest.timer, irqchip: true)
            try guest.vcpu.setCPUID(hypervisor.supportedCPUID())
            try guest.memory.write(APICGuest.timerHandler, at: 0x2200)
            try enterProtectedMode(guest, gates: [(0x40, 0x2200, 0x8E)])
            let khz = UInt64(try guest.vcpu.tscFrequency())
            let (lvtt, count, interrupts): (UInt32, UInt32, UInt32) = switch mode {
            case .oneShot: (0x40, 20_000_000, 1)
            case .periodic: (0x2_0040, 2_000_000, 5)
            case .tscDeadline: (0x4_0040, 0, 1)
            }
            try guest.memory.store(interrupts, at: 0x3004)
            try guest.memory.store(lvtt, at: 0x3008)
            try guest.memory.store(count, at: 0x300C)
            try guest.memory.store(khz * 20, at: 0x3010)
            var start = Date()
            let trace = try portTrace(guest.vcpu) { exit in
                if exit.outPort == 0x10 { start = Date() }
            }
            let elapsed = Date().timeIntervalSince(start)
            return (trace, try guest.memory.load(UInt32.self, at: 0x3000), elapsed)
        }
        let expected = mode == .periodic ? 0.010 : 0.020
        for backend in [Backend.host, .soft] {
            let (trace, count, elapsed) = try run(backend)
            #expect(trace == ["10", "f1"], "\(backend)")
            #expect(count == (mode == .periodic ? 5 : 1), "\(backend)")
            #expect(elapsed >= expected * 0.9 && elapsed < 5, "\(backend): \(elapsed) s")
        }
    }

    /// INIT and SIPI from the BSP's ICR start vCPU 1 at 0x8000 in real
    /// mode; halted there with IF set, a fixed IPI from the BSP wakes it
    /// into its handler. Each vCPU runs on its own thread.
    @Test func initAndSIPIStartASecondVCPUThatAnIPIWakes() throws {
        func run(_ backend: Backend) throws -> [String] {
            let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: APICGuest.bootstrap, irqchip: true)
            let ap = try guest.vm.createVCPU(id: 1)
            try guest.memory.write(APICGuest.application, at: 0x8000)
            try guest.memory.write([0xE6, 0x45, 0xCF], at: 0x9000)  // out 0x45, al; iret
            try guest.memory.store(UInt32(0x0000_9000), at: 0x50 * 4)
            try enterProtectedMode(guest, gates: [])
            var trace = ["AP \(try ap.mpState())"]
            // The AP's KVM_RUN waits for INIT and SIPI on its thread.
            let apExits = Mutex<[String]>([])
            let apFirst = DispatchSemaphore(value: 0)
            let apGo = DispatchSemaphore(value: 0)
            let apDone = DispatchSemaphore(value: 0)
            let apThread = Thread {
                defer { apDone.signal() }
                guard let first = try? ap.runWithDeadline(seconds: 10) else { return }
                apExits.withLock { $0.append("\(first)") }
                apFirst.signal()
                apGo.wait()
                if let second = try? ap.runWithDeadline(seconds: 10) { apExits.withLock { $0.append("\(second)") } }
            }
            apThread.start()
            trace += try portTrace(guest.vcpu, maxExits: 1)
            guard apFirst.wait(timeout: .now() + 10) == .success else { return trace + ["AP never started"] }
            trace.append("AP \(try ap.mpState()) at \(String(format: "%x:%x", try ap.specialRegisters().cs.selector, try ap.registers().rip))")
            // Software-enable the AP's APIC, so that it takes the fixed IPI.
            var state = try ap.lapic()
            state[APIC_SPIV] = 0x1FF
            try ap.setLAPIC(state)
            apGo.signal()
            Thread.sleep(forTimeInterval: 0.3)  // The AP reaches STI; HLT.
            trace += try portTrace(guest.vcpu)
            _ = apDone.wait(timeout: .now() + 15)
            return trace + apExits.withLock { $0 }
        }
        let host = try run(.host)
        let soft = try run(.soft)
        #expect(host == ["AP uninitialized", "10", "AP runnable at 800:4", "f1",
                         "\(VCPUExit.io(PortIO(direction: .out, port: 0x44, size: 1, value: 0x42)))",
                         "\(VCPUExit.io(PortIO(direction: .out, port: 0x45, size: 1, value: 0x42)))"])
        #expect(soft == host)
    }

    /// KVM_NMI: the handler (IVT vector 2) runs before the next
    /// instruction, with or without an in-kernel irqchip.
    @Test(arguments: [false, true])
    func nmiInjectionRunsTheHandler(irqchip: Bool) throws {
        func run(_ backend: Backend) throws -> [String] {
            let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: APICGuest.nopAfterOut, irqchip: irqchip)
            try guest.memory.write(APICGuest.nmiHandler, at: 0x2000)
            try guest.memory.store(UInt32(0x0000_2000), at: 2 * 4)
            let trace = try portTrace(guest.vcpu) { exit in
                if exit.outPort == 0x10 { try guest.vcpu.injectNMI() }
            }
            // The frame the NMI pushed: IP after the OUT, CS 0.
            return trace + ["\(try guest.vcpu.events().nmi)", "\(try guest.memory.read(at: 0x8000 - 6, count: 4))"]
        }
        let host = try run(.host)
        #expect(Array(host.prefix(4)) == ["10", "32", "33", "f1"])
        #expect(try run(.soft) == host)
    }

    /// An NMI message (an MSI in NMI mode, to every APIC) wakes a vCPU
    /// halted with IF clear; its handler runs and returns after HLT.
    @Test func nmiMessageWakesAHaltedVCPU() throws {
        func run(_ backend: Backend) throws -> [String] {
            let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: APICGuest.haltAfterOut, irqchip: true)
            try guest.memory.write(APICGuest.nmiHandler, at: 0x2000)
            try guest.memory.store(UInt32(0x0000_2000), at: 2 * 4)
            let vm = guest.vm
            let result = Mutex("")
            let trace = try portTrace(guest.vcpu) { exit in
                guard exit.outPort == 0x10 else { return }
                Thread {
                    Thread.sleep(forTimeInterval: 0.3)
                    let r = outcome { () throws(KVMError) in try vm.signalMSI(address: 0xFEE0_0000 | 0xFF << 12, data: 0x400) }
                    result.withLock { $0 = r.description }
                }.start()
            }
            Thread.sleep(forTimeInterval: 0.1)
            return trace + [result.withLock { $0 }]
        }
        let host = try run(.host)
        #expect(host == ["10", "32", "33", "f1", "ok(1)"])
        #expect(try run(.soft) == host)
    }

    @Test func mpStateRulesAgree() throws {
        try expectSameOnBothBackends { hypervisor in
            let bare = try hypervisor.createVM().createVCPU(id: 0)
            let vm = try hypervisor.createVM()
            try vm.createIrqchip()
            let bsp = try vm.createVCPU(id: 0)
            let ap = try vm.createVCPU(id: 1)
            func set(_ vcpu: VCPU, _ state: UInt32) -> Outcome {
                var value = kvm_mp_state(mp_state: state)
                return outcome { () throws(KVMError) in try vcpu.handle.call(.setMPState, &value) }
            }
            func get(_ vcpu: VCPU) -> Outcome {
                outcome { () throws(KVMError) -> Int32 in Int32(try vcpu.handle.get(.getMPState, kvm_mp_state.self).mp_state) }
            }
            var trace: [(String, Outcome)] = [("bsp", get(bsp)), ("ap", get(ap)), ("bare", get(bare))]
            for state: UInt32 in [0, 1, 2, 3, 4, 5, 9, 11] {
                trace.append(("bare set \(state)", set(bare, state)))
                trace.append(("ap set \(state)", set(ap, state)))
                trace.append(("ap get after \(state)", get(ap)))
            }
            trace.append(("ap CS after SIPI received", outcome { () throws(KVMError) -> Int32 in
                _ = set(ap, 4)
                _ = get(ap)
                return Int32(try ap.specialRegisters().cs.selector)
            }))
            return trace
        }
    }

    /// IA32_APIC_BASE through KVM_SET_MSRS: relocation and disabling are
    /// taken, reserved bits and x2APIC (not in SoftKVM's CPUID) are not;
    /// the page follows (a disabled APIC is hardware-disabled in its reads).
    @Test func apicBaseMSRRulesAgree() throws {
        func run(_ backend: Backend) throws -> [String] {
            let vm = try backend.hypervisor().createVM()
            try vm.createIrqchip()
            let vcpu = try vm.createVCPU(id: 1)
            var trace: [String] = []
            for value: UInt64 in [0xFEE0_0800, 0xFEC0_0800, 0xFEE0_0000, 0xFEE0_0C00, 0xFEE0_0801, 0x10_FEE0_0800,
                                  0xFEE0_0900, 0xFEE0_0800] {
                let count = try vcpu.writeMSRs([(MSR_IA32_APICBASE, value)])
                trace.append(String(format: "%llx: %d -> %llx", value, count, try vcpu.msr(MSR_IA32_APICBASE) ?? 0))
            }
            trace.append(hexDump(try lapicPage(vcpu)))
            return trace
        }
        let host = try run(.host)
        let soft = try run(.soft)
        for (h, s) in zip(host, soft) { #expect(s == h) }
    }

    /// kvmclock: the guest enables MSR_KVM_SYSTEM_TIME_NEW and the wall
    /// clock; the pvclock structure KVM writes gives, for the TSC the guest
    /// read, the time KVM_GET_CLOCK gives (within what the exit took), and
    /// its scale is the TSC's frequency.
    @Test(arguments: Backend.allCases)
    func kvmclockStructureAgreesWithGetClock(_ backend: Backend) throws {
        let code: [UInt8] = [
            0xB9, 0x01, 0x4D, 0x56, 0x4B,  // mov ecx, 0x4b564d01
            0xB8, 0x01, 0x30, 0x00, 0x00,  // mov eax, 0x3001
            0x31, 0xD2,                    // xor edx, edx
            0x0F, 0x30,                    // wrmsr
            0xB9, 0x00, 0x4D, 0x56, 0x4B,  // mov ecx, 0x4b564d00
            0xB8, 0x40, 0x30, 0x00, 0x00,  // mov eax, 0x3040
            0x0F, 0x30,                    // wrmsr
            0x0F, 0x31,                    // rdtsc
            0xE6, 0x10,                    // out 0x10, al
            0xE6, 0xF1,                    // out 0xf1, al
        ]
        let hypervisor = try backend.hypervisor()
        let guest = try RealModeGuest(hypervisor: hypervisor, code: code, irqchip: true)
        try enterProtectedMode(guest, gates: [])
        var clock: UInt64 = 0
        var tsc: UInt64 = 0
        let trace = try portTrace(guest.vcpu) { exit in
            guard exit.outPort == 0x10 else { return }
            clock = try guest.vm.clock().clock
            let registers = try guest.vcpu.registers()
            tsc = registers.rdx << 32 | registers.rax & 0xFFFF_FFFF
        }
        #expect(trace == ["10", "f1"])
        let version = try guest.memory.load(UInt32.self, at: 0x3000)
        let timestamp = try guest.memory.load(UInt64.self, at: 0x3008)
        let systemTime = try guest.memory.load(UInt64.self, at: 0x3010)
        let multiplier = try guest.memory.load(UInt32.self, at: 0x3018)
        let shift = Int8(bitPattern: try guest.memory.read(at: 0x301C, count: 1)[0])
        #expect(version != 0 && version & 1 == 0)
        var delta = tsc &- timestamp
        delta = shift < 0 ? delta >> UInt64(-Int(shift)) : delta << UInt64(shift)
        let guestNanoseconds = systemTime &+ UInt64(delta.multipliedFullWidth(by: UInt64(multiplier)).high << 32
            | delta.multipliedFullWidth(by: UInt64(multiplier)).low >> 32)
        let difference = Int64(bitPattern: clock &- guestNanoseconds)
        #expect(difference > -1_000_000 && difference < 500_000_000, "KVM_GET_CLOCK \(clock), pvclock \(guestNanoseconds)")
        // The scale is the TSC's frequency: a second of cycles is a second.
        let khz = UInt64(try guest.vcpu.tscFrequency())
        var second = khz * 1000
        second = shift < 0 ? second >> UInt64(-Int(shift)) : second << UInt64(shift)
        let nanoseconds = (UInt64(multiplier) * second) >> 32
        #expect(nanoseconds > 999_000_000 && nanoseconds < 1_001_000_000)
        // The wall clock: the epoch of kvmclock's 0, a recent time.
        let seconds = try guest.memory.load(UInt32.self, at: 0x3044)
        #expect(abs(Double(seconds) + Double(clock) / 1e9 - Date().timeIntervalSince1970) < 60)
        if backend == .soft {
            #expect(try guest.memory.read(at: 0x301D, count: 1)[0] & 1 == 1, "PVCLOCK_TSC_STABLE_BIT")
        }
    }

    /// kvmclock set up by user space (KVM_SET_MSRS, as a VMM restores it):
    /// the wall clock is written at once, the pvclock structure by the next KVM_RUN.
    @Test func kvmclockMSRsFromUserSpaceAreWritten() throws {
        func run(_ backend: Backend) throws -> [String] {
            let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: [0xE6, 0xF1], irqchip: true)
            let count = try guest.vcpu.writeMSRs([(MSR_KVM_WALL_CLOCK_NEW, 0x3040), (MSR_KVM_SYSTEM_TIME_NEW, 0x3001)])
            let wall = try guest.memory.load(UInt32.self, at: 0x3040)
            let trace = try portTrace(guest.vcpu)
            let version = try guest.memory.load(UInt32.self, at: 0x3000)
            let multiplier = try guest.memory.load(UInt32.self, at: 0x3018)
            return ["\(count)", "wall version \(wall)", "\(trace)", "version even \(version & 1 == 0 && version != 0)",
                    "scaled \(multiplier != 0)"]
        }
        let host = try run(.host)
        #expect(host == ["2", "wall version 2", "[\"f1\"]", "version even true", "scaled true"])
        #expect(try run(.soft) == host)
    }

    /// The TSC counts at the frequency KVM_GET_TSC_KHZ reports, while the
    /// guest runs and while it waits in user space.
    @Test(arguments: Backend.allCases)
    func tscCountsAtTheReportedFrequency(_ backend: Backend) throws {
        let code: [UInt8] = [
            0x0F, 0x31,        // rdtsc
            0x66, 0x89, 0xC6,  // mov esi, eax
            0x66, 0x89, 0xD7,  // mov edi, edx
            0xE6, 0x10,        // out 0x10, al
            0x0F, 0x31,        // rdtsc
            0xE6, 0xF1,        // out 0xf1, al
        ]
        let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: code)
        var start = Date()
        let trace = try portTrace(guest.vcpu) { exit in
            if exit.outPort == 0x10 {
                start = Date()
                Thread.sleep(forTimeInterval: 0.2)
            }
        }
        let elapsed = Date().timeIntervalSince(start)
        #expect(trace == ["10", "f1"])
        let registers = try guest.vcpu.registers()
        let first = registers.rdi << 32 | registers.rsi & 0xFFFF_FFFF
        let second = registers.rdx << 32 | registers.rax & 0xFFFF_FFFF
        let khz = Double(try guest.vcpu.tscFrequency())
        let seconds = Double(second &- first) / (khz * 1000)
        #expect(seconds >= 0.19 && seconds <= elapsed + 0.05, "\(seconds) s of TSC in \(elapsed) s")
    }

    @Test func clockRequestsAgree() throws {
        try expectSameOnBothBackends { hypervisor in
            let vm = try hypervisor.createVM()
            var data = kvm_clock_data()
            data.clock = 7_000_000_000
            data.flags = 0x10
            let bad = outcome { () throws(KVMError) in try vm.handle.call(.setClock, &data) }
            data.flags = UInt32(KVM_CLOCK_REALTIME)
            var now = timespec()
            clock_gettime(CLOCK_REALTIME, &now)
            // A realtime a second ago: the clock is set a second later than asked.
            data.realtime = UInt64(now.tv_sec - 1) * 1_000_000_000 + UInt64(now.tv_nsec)
            let realtime = outcome { () throws(KVMError) in try vm.handle.call(.setClock, &data) }
            let value = try vm.clock().clock
            return [
                ("unknown flag", bad), ("realtime", realtime),
                ("a second added", .ok(value >= 8_000_000_000 && value < 9_000_000_000 ? 1 : 0)),
            ]
        }
    }

    /// The MSRs KVM_GET_MSR_INDEX_LIST names for the TSC, the APIC timer and kvmclock, read and written.
    @Test func timeMSRsRoundTripAgree() throws {
        func run(_ backend: Backend) throws -> [String] {
            let vm = try backend.hypervisor().createVM()
            try vm.createIrqchip()
            let vcpu = try vm.createVCPU(id: 0)
            let list = try backend.hypervisor().msrIndexList()
            var trace: [String] = []
            for index in [MSR_IA32_TSC_ADJUST, MSR_IA32_TSC_DEADLINE, MSR_KVM_WALL_CLOCK_NEW, MSR_KVM_SYSTEM_TIME_NEW,
                          MSR_KVM_WALL_CLOCK, MSR_KVM_SYSTEM_TIME] {
                trace.append(String(format: "%x listed \(list.contains(index))", index))
                trace.append("read \(try vcpu.msr(index).map { String($0) } ?? "refused")")
            }
            // Written to a page outside memory: kept, with nothing written.
            trace.append("set \(try vcpu.writeMSRs([(MSR_KVM_SYSTEM_TIME_NEW, 0x5001), (MSR_IA32_TSC_ADJUST, 42), (MSR_IA32_TSC_DEADLINE, 5)]))")
            trace.append("\(try vcpu.readMSRs([MSR_KVM_SYSTEM_TIME_NEW, MSR_IA32_TSC_ADJUST, MSR_IA32_TSC_DEADLINE]).entries.map(\.data))")
            return trace
        }
        let host = try run(.host)
        let soft = try run(.soft)
        #expect(soft == host)
    }
}

@Suite("SoftKVM's time and paravirtual leaves")
struct SoftTimeTests {
    @Test func supportedCPUIDHasKVMsParavirtualLeaves() throws {
        let cpuid = try Hypervisor(backend: SoftBackend()).supportedCPUID()
        let signature = try #require(cpuid.first { $0.function == 0x4000_0000 })
        #expect(signature.eax == 0x4000_0001)
        #expect([signature.ebx, signature.ecx, signature.edx] == [0x4B4D_564B, 0x564B_4D56, 0x4D])
        let features = try #require(cpuid.first { $0.function == 0x4000_0001 })
        #expect(features.eax & (1 << 3) != 0, "KVM_FEATURE_CLOCKSOURCE2")
        #expect(features.eax & (1 << 24) != 0, "KVM_FEATURE_CLOCKSOURCE_STABLE_BIT")
        let leaf1 = try #require(cpuid.first { $0.function == 1 })
        #expect(leaf1.ecx & (1 << 31) != 0, "hypervisor")
        #expect(leaf1.ecx & (1 << 24) != 0, "TSC-deadline timer")
        #expect(leaf1.edx & (1 << 9) != 0, "APIC")
    }

    /// RDTSCP gives the TSC and IA32_TSC_AUX; KVM_SET_TSC_KHZ changes the rate the TSC counts at.
    @Test func rdtscpGivesTheAuxiliaryValueAndTheRateFollowsSetTSCKhz() throws {
        let code: [UInt8] = [
            0x0F, 0x01, 0xF9,  // rdtscp
            0x66, 0x89, 0xC6,  // mov esi, eax
            0x66, 0x89, 0xD7,  // mov edi, edx
            0xE6, 0x10,        // out 0x10, al
            0x0F, 0x31,        // rdtsc
            0xE6, 0xF1,        // out 0xf1, al
        ]
        let guest = try RealModeGuest(hypervisor: Backend.soft.hypervisor(), code: code)
        try guest.vcpu.setTSCFrequency(100_000)  // 100 MHz
        #expect(try guest.vcpu.tscFrequency() == 100_000)
        #expect(try guest.vcpu.writeMSRs([(0xC000_0103, 7)]) == 1)
        let trace = try portTrace(guest.vcpu) { exit in
            if exit.outPort == 0x10 { Thread.sleep(forTimeInterval: 0.1) }
        }
        #expect(trace == ["10", "f1"])
        let registers = try guest.vcpu.registers()
        #expect(registers.rcx & 0xFFFF_FFFF == 7)
        let cycles = (registers.rdx << 32 | registers.rax & 0xFFFF_FFFF) &- (registers.rdi << 32 | registers.rsi & 0xFFFF_FFFF)
        #expect(cycles >= 9_500_000 && cycles < 100_000_000, "\(cycles) cycles at 100 MHz in 0.1 s")
    }

    /// A level-triggered IOAPIC pin (SDM 11.8.4, KVM's ioapic.c): while the
    /// handler runs the vector is in service and the pin's remote IRR is
    /// set; the handler's EOI, broadcast because the vector is level in the
    /// TMR, clears it. With a resampling irqfd the EOI lowers the line and
    /// signals the resampler, not before. (kvm_pvm ends a level interrupt
    /// when it injects it, before the handler runs, so this is checked on
    /// SoftKVM only.)
    @Test(arguments: [false, true])
    func levelInterruptIsEndedByTheGuestsEOI(resampled: Bool) throws {
        let guest = try RealModeGuest(hypervisor: Backend.soft.hypervisor(), code: APICGuest.ioapicThenWait, irqchip: true)
        try guest.memory.write(APICGuest.handler(port: 0x31), at: 0x2100)
        try enterProtectedMode(guest, gates: [(0x36, 0x2100, 0x8E)])
        let irqfd = try EventFD(nonBlocking: true)
        let resample = try EventFD(nonBlocking: true)
        if resampled { try guest.vm.registerIRQFD(irqfd, gsi: 17, resample: resample) }
        var inHandler: (redirection: UInt64, page: LAPICState, resampled: Bool)?
        let trace = try portTrace(guest.vcpu) { exit in
            if exit.outPort == 0x10 {
                if resampled { try irqfd.signal() } else { try guest.vm.setIRQLine(17, level: true) }
            } else if exit.outPort == 0x31 {
                inHandler = (try guest.vm.irqchipState(.ioapic).ioapicRedirection(pin: 17), try guest.vcpu.lapic(), resample.isSignaled())
                if !resampled { try guest.vm.setIRQLine(17, level: false) }
            }
        }
        #expect(trace == ["10", "31", "f1"])
        let during = try #require(inHandler)
        #expect(during.redirection & (1 << 14) != 0, "remote IRR while in service")
        #expect(during.page[APIC_ISR + 0x10] == 1 << 22, "vector 0x36 in service")
        #expect(during.page[APIC_TMR + 0x10] == 1 << 22, "vector 0x36 level-triggered")
        #expect(during.page[APIC_PROCPRI] == 0x30)
        #expect(!during.resampled)
        let after = try guest.vcpu.lapic()
        #expect(try guest.vm.irqchipState(.ioapic).ioapicRedirection(pin: 17) & (1 << 14) == 0)
        #expect(after[APIC_ISR + 0x10] == 0 && after[APIC_IRR + 0x10] == 0)
        #expect(resample.isSignaled() == resampled)
    }

    /// A second NMI while the handler runs waits for its IRET (Intel SDM
    /// 6.7.1), then runs the handler again. (kvm_pvm keeps it pending past
    /// the IRET, which no hardware does, so this is checked on SoftKVM only.)
    @Test(arguments: [false, true])
    func secondNMIWaitsForTheHandlersIRET(irqchip: Bool) throws {
        let guest = try RealModeGuest(hypervisor: Backend.soft.hypervisor(), code: APICGuest.nopAfterOut, irqchip: irqchip)
        try guest.memory.write(APICGuest.nmiHandler, at: 0x2000)
        try guest.memory.store(UInt32(0x0000_2000), at: 2 * 4)
        var injections = 0
        var masked: [Bool] = []
        let trace = try portTrace(guest.vcpu) { exit in
            if exit.outPort == 0x33 { masked.append(try guest.vcpu.events().nmi.masked) }
            guard exit.outPort == 0x10 || (exit.outPort == 0x32 && injections == 1) else { return }
            try guest.vcpu.injectNMI()
            injections += 1
        }
        #expect(trace == ["10", "32", "33", "32", "33", "f1"])
        #expect(masked == [true, true])
        #expect(try !guest.vcpu.events().nmi.masked)
        #expect(try !guest.vcpu.events().nmi.pending)
    }

    /// A TSC written through KVM_SET_MSRS on each vCPU within a second of
    /// the first is taken as synchronisation: the vCPUs read the same TSC.
    @Test func tscWritesFromUserSpaceSynchroniseTheVCPUs() throws {
        let vm = try Backend.soft.hypervisor().createVM()
        let first = try vm.createVCPU(id: 0)
        let second = try vm.createVCPU(id: 1)
        #expect(try first.writeMSRs([(MSR_IA32_TSC, 1_000_000)]) == 1)
        Thread.sleep(forTimeInterval: 0.01)
        #expect(try second.writeMSRs([(MSR_IA32_TSC, 1_000_000)]) == 1)
        let a = try #require(try first.msr(MSR_IA32_TSC))
        let b = try #require(try second.msr(MSR_IA32_TSC))
        // Both count from the first write: 10 ms apart would be 20 million cycles at 2 GHz.
        #expect(b >= a && b - a < 5_000_000)
    }
}

@Suite("Message delivery to configured local APICs on both backends", .enabled(if: HostKVM.isAvailable))
struct APICDeliveryDifferentialTests {
    /// Three software-enabled APICs given logical IDs through KVM_SET_LAPIC
    /// (flat, then cluster, then two sharing one ID, which disables the
    /// map), an APIC ID changed to another's (aliasing), and MSIs of each
    /// kind to physical and logical destinations: what KVM_SIGNAL_MSI
    /// returns and which IRR bits each APIC has.
    @Test func msiDeliveryThroughTheAPICMapAgrees() throws {
        func run(_ backend: Backend) throws -> [String] {
            let vm = try backend.hypervisor().createVM()
            try vm.createIrqchip()
            let vcpus = try (0..<3).map { try vm.createVCPU(id: UInt32($0)) }
            func configure(ldr: [UInt32], dfr: UInt32, ids: [UInt32]? = nil) throws {
                for (i, vcpu) in vcpus.enumerated() {
                    var state = try vcpu.lapic()
                    state[APIC_SPIV] = 0x1FF
                    state[APIC_LDR] = ldr[i] << 24
                    state[APIC_DFR] = dfr
                    if let ids { state[APIC_ID] = ids[i] << 24 }
                    for word in 0..<8 { state[APIC_IRR + word * 0x10] = 0 }
                    try vcpu.setLAPIC(state)
                }
            }
            func irrs() throws -> String {
                try vcpus.map { vcpu in
                    let page = try vcpu.lapic()
                    return (0..<8).map { String(format: "%08x", page[APIC_IRR + $0 * 0x10]) }.joined()
                }.joined(separator: "/")
            }
            func msi(dest: UInt64, logical: Bool, mode: UInt32, vector: UInt32) -> String {
                outcome { () throws(KVMError) -> Int32 in
                    try vm.signalMSI(address: 0xFEE0_0000 | dest << 12 | (logical ? 4 : 0), data: mode << 8 | vector)
                }.description
            }
            var trace: [String] = []
            let cases: [(String, [UInt32], UInt32, [UInt32]?)] = [
                ("flat", [1, 2, 4], APIC_DFR_FLAT, nil),
                ("cluster", [0x11, 0x12, 0x21], APIC_DFR_CLUSTER, nil),
                ("shared logical ID", [1, 1, 4], APIC_DFR_FLAT, nil),
                ("aliased APIC IDs", [1, 2, 4], APIC_DFR_FLAT, [0, 0, 2]),
            ]
            for (name, ldr, dfr, ids) in cases {
                try configure(ldr: ldr, dfr: dfr, ids: ids)
                var vector: UInt32 = 0x40
                for (dest, logical) in [(0 as UInt64, false), (1, false), (2, false), (3, true), (5, true), (7, true),
                                        (0x13, true), (0x21, true), (0xFF, true), (0xFF, false)] {
                    for mode: UInt32 in [0, 1] {
                        trace.append("\(name) dest \(dest) logical \(logical) mode \(mode): \(msi(dest: dest, logical: logical, mode: mode, vector: vector))")
                        vector += 1
                    }
                }
                trace.append("\(name) IRR \(try irrs())")
            }
            return trace
        }
        let host = try run(.host)
        let soft = try run(.soft)
        #expect(soft.count == host.count)
        if ProcessInfo.processInfo.environment["SWIFTKVM_TRACE"] != nil { host.forEach { print($0) } }
        for (h, s) in zip(host, soft) { #expect(s == h) }
    }
}
