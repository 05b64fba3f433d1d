import KVM
import Testing
@testable import SoftKVM
import X86

/// IA32_ARCH_CAPABILITIES, which KVM emulates for every guest: the guest
/// reads it where its CPUID shows it and cannot write it; the owner sets
/// fewer capabilities, never more. SoftKVM reports the side channels its
/// CPU does not have, so that Linux runs without page-table isolation.
@Suite("IA32_ARCH_CAPABILITIES")
struct ArchCapabilitiesTests {
    static let donePort: UInt16 = 0x10
    static let generalProtectionPort: UInt16 = 0x67
    // mov ecx, 0x10a
    static let selectMSR: [UInt8] = [0x66, 0xB9, 0x0A, 0x01, 0x00, 0x00]
    static let rdmsr: [UInt8] = [0x0F, 0x32]
    // xor eax, eax; xor edx, edx; wrmsr
    static let wrmsrZero: [UInt8] = [0x66, 0x31, 0xC0, 0x66, 0x31, 0xD2, 0x0F, 0x30]
    // out 0x10, al; hlt
    static let done: [UInt8] = [0xE6, 0x10, 0xF4]

    /// The port the guest ended at (0x10 done, 0x67 #GP), and EDX:EAX.
    static func run(_ hypervisor: Hypervisor, _ code: [UInt8], cpuid: [CPUIDEntry]) throws -> (port: UInt16, value: UInt64) {
        let guest = try RealModeGuest(hypervisor: hypervisor, code: code + done)
        try guest.memory.write([0xE6, UInt8(generalProtectionPort), 0xF4], at: 0x3000)
        try guest.memory.store(UInt32(0x0000_3000), at: 13 * 4)
        try guest.vcpu.setCPUID(cpuid)
        guard case .io(let io) = try guest.vcpu.run() else { return (0, 0) }
        let registers = try guest.vcpu.registers()
        return (io.port, (registers.rdx & 0xFFFF_FFFF) << 32 | (registers.rax & 0xFFFF_FFFF))
    }

    static func withoutArchCapabilities(_ cpuid: [CPUIDEntry]) -> [CPUIDEntry] {
        cpuid.map { entry in
            var entry = entry
            if entry.function == 7 && entry.index == 0 { entry.edx &= ~ArchCapabilities.cpuidBit }
            return entry
        }
    }

    @Test func softGuestReadsTheSideChannelsItsCPUHasNot() throws {
        let hypervisor = try Hypervisor(backend: SoftBackend())
        let supported = try hypervisor.supportedCPUID()
        let leaf7 = try #require(supported.first { $0.function == 7 && $0.index == 0 })
        #expect(leaf7.edx & ArchCapabilities.cpuidBit != 0)
        #expect(try hypervisor.msrIndexList().contains(MSR.archCapabilities))
        let read = try Self.run(hypervisor, Self.selectMSR + Self.rdmsr, cpuid: supported)
        #expect(read.port == Self.donePort)
        #expect(read.value == ArchCapabilities.softCPU)
        // RDCL_NO and MDS_NO are what spare Linux page-table isolation and buffer clearing.
        #expect(read.value & (ArchCapabilities.rdclNo | ArchCapabilities.mdsNo) == ArchCapabilities.rdclNo | ArchCapabilities.mdsNo)
    }

    /// The same rules on both backends: the guest gets #GP without the
    /// CPUID bit or when it writes; the owner writes 0 but not a bit no CPU
    /// defines. (The guest's read with the bit is not compared: on kvm_pvm
    /// a real-mode guest's CPUID leaf 7 EDX read 0x10 after KVM_SET_CPUID2
    /// set bit 29, and its RDMSR then took #GP, as KVM's rule says.)
    @Test(.enabled(if: HostKVM.isAvailable))
    func accessRulesMatchTheHost() throws {
        try expectSameOnBothBackends { hypervisor in
            let supported = try hypervisor.supportedCPUID()
            let shown = try #require(supported.first { $0.function == 7 && $0.index == 0 }).edx & ArchCapabilities.cpuidBit != 0
            let listed = try hypervisor.msrIndexList().contains(MSR.archCapabilities)
            let hidden = try Self.run(hypervisor, Self.selectMSR + Self.rdmsr, cpuid: Self.withoutArchCapabilities(supported))
            let written = try Self.run(hypervisor, Self.selectMSR + Self.wrmsrZero, cpuid: supported)

            let guest = try RealModeGuest(hypervisor: hypervisor, code: Self.done)
            try guest.vcpu.setCPUID(supported)
            let ownerZero = outcome { () throws(KVMError) -> Int32 in
                try guest.vcpu.setMSRs([MSREntry(index: MSR.archCapabilities, data: 0)])
                return Int32(try guest.vcpu.msrs([MSR.archCapabilities])[0].data)
            }
            let ownerUndefinedBit = outcome { () throws(KVMError) in
                try guest.vcpu.setMSRs([MSREntry(index: MSR.archCapabilities, data: 1 << 63)])
            }
            return [
                ("leaf 7 EDX[29]", .ok(shown ? 1 : 0)),
                ("in KVM_GET_MSR_INDEX_LIST", .ok(listed ? 1 : 0)),
                ("guest RDMSR without the CPUID bit ends at port", .ok(Int32(hidden.port))),
                ("guest WRMSR ends at port", .ok(Int32(written.port))),
                ("owner writes 0 and reads", ownerZero),
                ("owner writes bit 63", ownerUndefinedBit),
            ]
        }
    }
}
