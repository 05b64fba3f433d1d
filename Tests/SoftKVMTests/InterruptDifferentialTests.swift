import CLinuxKVM
import Foundation
import Glibc
@testable import KVM
import KVMPlatform
@testable import SoftKVM
import SystemPackage
import Testing

/// Runs `scenario` on the host and on SoftKVM and expects the same named
/// results: outcomes and irqchip state bytes, each written as a string.
private func expectSameTrace(
    _ scenario: (Hypervisor) throws -> [(String, String)], sourceLocation: SourceLocation = #_sourceLocation
) throws {
    let host = try scenario(Backend.host.hypervisor())
    let soft = try scenario(Backend.soft.hypervisor())
    #expect(host.map(\.0) == soft.map(\.0), sourceLocation: sourceLocation)
    if ProcessInfo.processInfo.environment["SWIFTKVM_TRACE"] != nil {
        for (name, value) in host { print("host \(name): \(value)") }
    }
    for ((name, expected), (_, actual)) in zip(host, soft) {
        #expect(actual == expected, "\(name): host gave \(expected), SoftKVM gave \(actual)", sourceLocation: sourceLocation)
    }
}

private func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

/// The chip's state as KVM_GET_IRQCHIP gives it, or its errno.
private func chipState(_ vm: VirtualMachine, _ chip: Irqchip) -> String {
    do throws(KVMError) {
        return hex(try vm.irqchipState(chip).bytes)
    } catch {
        return error.errno.symbolicName
    }
}

private func status(_ vm: VirtualMachine, _ gsi: UInt32, _ level: Bool) -> String {
    do throws(KVMError) {
        switch try vm.setIRQLineStatus(gsi, level: level) {
        case .ignored(let value): return "ignored(\(value))"
        case .coalesced: return "coalesced"
        case .delivered(let count): return "delivered(\(count))"
        }
    } catch {
        return error.errno.symbolicName
    }
}

private func result(_ body: () throws(KVMError) -> Void) -> String {
    outcome(body).description
}

private func setPIC(_ vm: VirtualMachine, _ chip: Irqchip, _ change: (inout [UInt8]) -> Void) throws {
    var state = try vm.irqchipState(chip)
    change(&state.bytes)
    try vm.setIrqchipState(state)
}

/// The irqchip requests on the host's /dev/kvm and on SoftKVM: the same
/// results, errno and deterministic state bytes (InterruptTests' cases and more).
@Suite("SoftKVM's irqchip, irqfd, ioeventfd and coalesced MMIO against the host", .enabled(if: HostKVM.isAvailable))
struct InterruptDifferentialTests {
    @Test(arguments: [
        Capability.irqchip, .irqRouting, .irqfd, .irqfdResample, .ioeventfd, .ioeventfdAnyLength, .coalescedMMIO,
        .coalescedPio, .irqInjectStatus, .ioapicPolarityIgnored, .signalMSI,
    ])
    func interruptCapabilityAgrees(_ capability: Capability) throws {
        try expectSameOnBothBackends { hypervisor in
            let vm = try hypervisor.createVM()
            return [
                ("system", outcome { () throws(KVMError) in try hypervisor.checkExtension(capability) }),
                ("VM", outcome { () throws(KVMError) in try vm.checkExtension(capability) }),
            ]
        }
    }

    @Test func irqchipCreationRulesAgree() throws {
        try expectSameTrace { hypervisor in
            let vm = try hypervisor.createVM()
            let late = try hypervisor.createVM()
            _ = try late.createVCPU(id: 0)
            return [
                ("state before", chipState(vm, .picMaster)),
                ("line before", status(vm, 4, true)),
                ("create", result { () throws(KVMError) in try vm.createIrqchip() }),
                ("create again", result { () throws(KVMError) in try vm.createIrqchip() }),
                ("create after a vCPU", result { () throws(KVMError) in try late.createIrqchip() }),
                ("unknown chip", chipState(vm, Irqchip(rawValue: 3))),
            ]
        }
    }

    @Test func initialIrqchipStateAgrees() throws {
        try expectSameTrace { hypervisor in
            let vm = try hypervisor.createVM()
            try vm.createIrqchip()
            return [Irqchip.picMaster, .picSlave, .ioapic].map { ("\($0)", chipState(vm, $0)) }
        }
    }

    /// Every GSI of the default table, raised and lowered, edge then level on the PIC.
    @Test func defaultRoutingStatusesAndStateAgree() throws {
        try expectSameTrace { hypervisor in
            let vm = try hypervisor.createVM()
            try vm.createIrqchip()
            var trace: [(String, String)] = []
            for gsi: UInt32 in [0, 1, 2, 3, 4, 7, 8, 9, 12, 15, 16, 23, 24, 100, 1024] {
                trace.append(("GSI \(gsi) up", status(vm, gsi, true)))
                trace.append(("GSI \(gsi) up again", status(vm, gsi, true)))
                trace.append(("GSI \(gsi) down", status(vm, gsi, false)))
                trace.append(("GSI \(gsi) up after down", status(vm, gsi, true)))
            }
            trace += [Irqchip.picMaster, .picSlave, .ioapic].map { ("\($0) after edges", chipState(vm, $0)) }
            // Pins 3 and 9 level-triggered (ELCR), pin 5 masked.
            try setPIC(vm, .picMaster) { $0[14] = 0x08; $0[2] = 0x20 }
            try setPIC(vm, .picSlave) { $0[14] = 0x02 }
            for gsi: UInt32 in [3, 5, 9] {
                trace.append(("level GSI \(gsi) down", status(vm, gsi, false)))
                trace.append(("level GSI \(gsi) up", status(vm, gsi, true)))
                trace.append(("level GSI \(gsi) up again", status(vm, gsi, true)))
            }
            trace += [Irqchip.picMaster, .picSlave, .ioapic].map { ("\($0) after levels", chipState(vm, $0)) }
            return trace
        }
    }

    /// IOAPIC pins unmasked with no vCPU: nothing accepts the message.
    @Test func unmaskedIOAPICPinsWithoutVCPUsAgree() throws {
        try expectSameTrace { hypervisor in
            let vm = try hypervisor.createVM()
            try vm.createIrqchip()
            var state = try vm.irqchipState(.ioapic)
            state.setIOAPICRedirection(pin: 17, 0x30)  // edge, unmasked
            state.setIOAPICRedirection(pin: 18, 0x31 | 1 << 15)  // level, unmasked
            try vm.setIrqchipState(state)
            return [
                ("edge up", status(vm, 17, true)),
                ("edge up again", status(vm, 17, true)),
                ("edge down", status(vm, 17, false)),
                ("edge up after down", status(vm, 17, true)),
                ("level up", status(vm, 18, true)),
                ("level up again", status(vm, 18, true)),
                ("state", chipState(vm, .ioapic)),
                ("level down", status(vm, 18, false)),
                ("state after", chipState(vm, .ioapic)),
            ]
        }
    }

    /// MSIs and unmasked IOAPIC pins with vCPUs whose LAPICs are at reset.
    @Test func msiDeliveryToLocalAPICsAtResetAgrees() throws {
        try expectSameTrace { hypervisor in
            let bare = try hypervisor.createVM()
            let empty = try hypervisor.createVM()
            try empty.createIrqchip()
            let vm = try hypervisor.createVM()
            try vm.createIrqchip()
            let single = try hypervisor.createVM()
            try single.createIrqchip()
            let triple = try hypervisor.createVM()
            try triple.createIrqchip()
            let kept = [try vm.createVCPU(id: 0), try vm.createVCPU(id: 1), try single.createVCPU(id: 0),
                        try triple.createVCPU(id: 0), try triple.createVCPU(id: 7), try triple.createVCPU(id: 3)]
            func msi(_ target: VirtualMachine, dest: UInt64 = 0, logical: Bool = false, mode: UInt32 = 0, vector: UInt32 = 0x30,
                     flags: MSIFlags = []) -> String {
                let address = 0xFEE0_0000 | dest << 12 | (logical ? 4 : 0)
                return outcome { () throws(KVMError) in
                    try target.signalMSI(address: address, data: mode << 8 | vector, flags: flags)
                }.description
            }
            var trace: [(String, String)] = [
                ("without irqchip", msi(bare)),
                ("unknown flag", msi(vm, flags: MSIFlags(rawValue: 0x80))),
                ("device id", msi(vm, flags: .validDeviceID)),
                ("no vCPU", msi(empty)),
                ("no vCPU, NMI", msi(empty, mode: 4)),
            ]
            for (name, mode) in [("fixed", UInt32(0)), ("lowest priority", 1), ("SMI", 2), ("NMI", 4), ("INIT", 5), ("SIPI", 6), ("ExtINT", 7)] {
                trace.append(("\(name) to 0", msi(vm, dest: 0, mode: mode)))
                trace.append(("\(name) to 1", msi(vm, dest: 1, mode: mode)))
                trace.append(("\(name) to 5", msi(vm, dest: 5, mode: mode)))
                trace.append(("\(name) level to 0", msi(vm, dest: 0, mode: mode, vector: 0xC030)))
                trace.append(("\(name) broadcast", msi(vm, dest: 0xFF, mode: mode)))
                trace.append(("\(name) logical 1", msi(vm, dest: 1, logical: true, mode: mode)))
                trace.append(("\(name) logical broadcast", msi(vm, dest: 0xFF, logical: true, mode: mode)))
                trace.append(("one vCPU, \(name) to 0", msi(single, dest: 0, mode: mode)))
                trace.append(("vCPUs 0 7 3, \(name) to 7", msi(triple, dest: 7, mode: mode)))
                trace.append(("vCPUs 0 7 3, \(name) to 3", msi(triple, dest: 3, mode: mode)))
                trace.append(("vCPUs 0 7 3, \(name) broadcast", msi(triple, dest: 0xFF, mode: mode)))
                trace.append(("one vCPU, \(name) to 1", msi(single, dest: 1, mode: mode)))
                trace.append(("one vCPU, \(name) broadcast", msi(single, dest: 0xFF, mode: mode)))
                trace.append(("one vCPU, \(name) logical 1", msi(single, dest: 1, logical: true, mode: mode)))
            }
            var state = try vm.irqchipState(.ioapic)
            state.setIOAPICRedirection(pin: 17, 0x30)  // Fixed edge to APIC 0.
            state.setIOAPICRedirection(pin: 18, 0x0100_0000_0000_8431)  // Level NMI to APIC 1.
            state.setIOAPICRedirection(pin: 19, 0x0000_0000_0000_0432)  // Edge NMI to APIC 0.
            try vm.setIrqchipState(state)
            trace += [
                ("fixed edge pin up", status(vm, 17, true)),
                ("fixed edge pin up again", status(vm, 17, true)),
                ("NMI level pin up", status(vm, 18, true)),
                ("NMI level pin up again", status(vm, 18, true)),
                ("NMI edge pin up", status(vm, 19, true)),
                ("ioapic after NMIs", chipState(vm, .ioapic)),
                ("load the RTC pin", result { () throws(KVMError) in
                    var rtc = try vm.irqchipState(.ioapic)
                    rtc.setIOAPICRedirection(pin: 8, 0x0433)  // Edge NMI to APIC 0, which takes it.
                    try vm.setIrqchipState(rtc)
                }),
                ("RTC up", status(vm, 8, true)),
                ("RTC down", status(vm, 8, false)),
                // No EOI comes for an NMI: the RTC interrupt stays unacknowledged.
                ("RTC up again", status(vm, 8, true)),
                ("RTC down again", status(vm, 8, false)),
                ("RTC through KVM_IRQ_LINE", result { () throws(KVMError) in try vm.setIRQLine(8, level: true) }),
                ("RTC down after", status(vm, 8, false)),
                ("state after the RTC", chipState(vm, .ioapic)),
                ("master after the RTC", chipState(vm, .picMaster)),
                ("slave after the RTC", chipState(vm, .picSlave)),
                ("ioapic", chipState(vm, .ioapic)),
            ]
            _ = kept
            return trace
        }
    }

    @Test func irqchipStateRoundTripsAgree() throws {
        try expectSameTrace { hypervisor in
            let vm = try hypervisor.createVM()
            try vm.createIrqchip()
            try setPIC(vm, .picMaster) { bytes in
                for i in 0..<16 { bytes[i] = UInt8(truncatingIfNeeded: 0x11 &* (i + 1)) }
            }
            var ioapic = try vm.irqchipState(.ioapic)
            ioapic.bytes[8] = 0x12  // ioregsel
            ioapic.bytes[12] = 0x05  // id
            ioapic.bytes[16] = 0x0F  // irr: pins 0-3 pending
            ioapic.setIOAPICRedirection(pin: 1, 0x0300_0000_0000_8041)  // level, unmasked, vector 0x41
            ioapic.setIOAPICRedirection(pin: 2, 0x0000_0000_0000_0042)  // edge, unmasked
            try vm.setIrqchipState(ioapic)
            return [
                ("master", chipState(vm, .picMaster)),
                ("ioapic", chipState(vm, .ioapic)),
                ("GSI 1 up", status(vm, 1, true)),
                ("GSI 2 up", status(vm, 2, true)),
                ("ioapic after", chipState(vm, .ioapic)),
            ]
        }
    }

    @Test func gsiRoutingRulesAgree() throws {
        try expectSameTrace { hypervisor in
            let bare = try hypervisor.createVM()
            let vm = try hypervisor.createVM()
            try vm.createIrqchip()
            let backend = hypervisor.handle.backend
            func route(_ entries: [RoutingEntry], flags: UInt32 = 0, count: UInt32? = nil, on target: VirtualMachine? = nil) -> String {
                let buffer = FlexibleArrayBuffer<kvm_irq_routing, kvm_irq_routing_entry>(capacity: max(entries.count, 1))
                buffer.header.pointee.nr = count ?? UInt32(entries.count)
                buffer.header.pointee.flags = flags
                for (i, entry) in entries.enumerated() { buffer.entries[i] = entry.kernelEntry }
                return rawOutcome(backend, (target ?? vm).rawDescriptor, KVMRequest.setGSIRouting.number, buffer.raw).description
            }
            return [
                ("without irqchip", route([.irqchip(gsi: 1, .ioapic, pin: 1)], on: bare)),
                ("table flags", route([.irqchip(gsi: 1, .ioapic, pin: 1)], flags: 1)),
                ("too many", route([], count: 4097)),
                ("GSI 1024", route([.irqchip(gsi: 1024, .ioapic, pin: 1)])),
                ("GSI 4095", route([.irqchip(gsi: 4095, .ioapic, pin: 1)])),
                ("GSI 4096", route([.irqchip(gsi: 4096, .ioapic, pin: 1)])),
                ("PIC pin 8", route([.irqchip(gsi: 1, .picMaster, pin: 8)])),
                ("slave pin 7", route([.irqchip(gsi: 1, .picSlave, pin: 7)])),
                ("IOAPIC pin 24", route([.irqchip(gsi: 1, .ioapic, pin: 24)])),
                ("chip 3", route([.irqchip(gsi: 1, Irqchip(rawValue: 3), pin: 0)])),
                ("unknown type", route([RoutingEntry(gsi: 1, route: .raw(type: 99, flags: 0, words: []))])),
                ("irqchip entry flags", route([RoutingEntry(gsi: 1, route: .raw(type: 1, flags: 1, words: [2, 1]))])),
                ("MSI devid", route([.msi(gsi: 30, address: 0xFEE0_0000, data: 0x31, deviceID: 7)])),
                ("MSI other flag", route([RoutingEntry(gsi: 1, route: .raw(type: 2, flags: 2, words: [0xFEE0_0000, 0, 0x31]))])),
                ("same chip twice", route([.irqchip(gsi: 4, .ioapic, pin: 4), .irqchip(gsi: 4, .ioapic, pin: 5)])),
                ("master and slave", route([.irqchip(gsi: 4, .picMaster, pin: 4), .irqchip(gsi: 4, .picSlave, pin: 4)])),
                ("MSI beside a pin", route([.irqchip(gsi: 4, .ioapic, pin: 4), .msi(gsi: 4, address: 0xFEE0_0000, data: 0x31)])),
                ("two pins for one GSI and one pin for two", route([
                    .irqchip(gsi: 4, .picMaster, pin: 4), .irqchip(gsi: 4, .ioapic, pin: 9),
                    .irqchip(gsi: 6, .picMaster, pin: 4), .msi(gsi: 30, address: 0xFEE0_0000, data: 0x31),
                ])),
                ("GSI 4 up", status(vm, 4, true)),
                ("GSI 6 up", status(vm, 6, true)),
                ("GSI 5 up", status(vm, 5, true)),
                ("MSI GSI 30 up", status(vm, 30, true)),
                ("MSI GSI 30 down", status(vm, 30, false)),
                ("master", chipState(vm, .picMaster)),
                ("ioapic", chipState(vm, .ioapic)),
                ("empty table", route([])),
                ("GSI 4 up in an empty table", status(vm, 4, true)),
            ]
        }
    }

    @Test func irqfdRulesAgree() throws {
        let pipeEnds = try #require({ () -> [Int32]? in
            var fds: [Int32] = [0, 0]
            return pipe(&fds) == 0 ? fds : nil
        }())
        defer { pipeEnds.forEach { _ = close($0) } }
        try expectSameTrace { hypervisor in
            let bare = try hypervisor.createVM()
            let vm = try hypervisor.createVM()
            try vm.createIrqchip()
            let first = try EventFD()
            let second = try EventFD()
            let resample = try EventFD()
            let unused = try EventFD()
            let backend = hypervisor.handle.backend
            func irqfd(_ target: VirtualMachine, fd: Int32, gsi: UInt32, flags: UInt32 = 0, resamplefd: Int32 = -1) -> String {
                var args = kvm_irqfd()
                args.fd = UInt32(bitPattern: fd)
                args.gsi = gsi
                args.flags = flags
                args.resamplefd = UInt32(bitPattern: resamplefd)
                return rawOutcome(backend, target.rawDescriptor, KVMRequest.irqfd.number, &args).description
            }
            let deassign = UInt32(KVM_IRQFD_FLAG_DEASSIGN)
            let resampleFlag = UInt32(KVM_IRQFD_FLAG_RESAMPLE)
            return [
                ("without irqchip", irqfd(bare, fd: first.rawValue, gsi: 5)),
                ("deassign without irqchip", irqfd(bare, fd: first.rawValue, gsi: 5, flags: deassign)),
                ("unknown flag", irqfd(vm, fd: first.rawValue, gsi: 5, flags: 4)),
                ("bad descriptor", irqfd(vm, fd: 9999, gsi: 5)),
                ("a pipe", irqfd(vm, fd: pipeEnds[0], gsi: 5)),
                ("assign", irqfd(vm, fd: first.rawValue, gsi: 5)),
                ("same eventfd, other GSI", irqfd(vm, fd: first.rawValue, gsi: 6)),
                ("other eventfd, same GSI", irqfd(vm, fd: second.rawValue, gsi: 5)),
                ("deassign on another GSI", irqfd(vm, fd: first.rawValue, gsi: 6, flags: deassign)),
                ("deassign", irqfd(vm, fd: first.rawValue, gsi: 5, flags: deassign)),
                ("deassign again", irqfd(vm, fd: first.rawValue, gsi: 5, flags: deassign)),
                ("deassign a pipe", irqfd(vm, fd: pipeEnds[0], gsi: 5, flags: deassign)),
                ("resample", irqfd(vm, fd: first.rawValue, gsi: 10, flags: resampleFlag, resamplefd: resample.rawValue)),
                ("resample with a bad resamplefd", irqfd(vm, fd: second.rawValue, gsi: 10, flags: resampleFlag, resamplefd: 9999)),
                ("resample without irqchip", irqfd(bare, fd: second.rawValue, gsi: 10, flags: resampleFlag, resamplefd: resample.rawValue)),
                ("GSI beyond the table", irqfd(vm, fd: unused.rawValue, gsi: 5000)),
            ]
        }
    }

    /// Signalling an irqfd raises its GSI: the PIC's request bit, read back
    /// with KVM_GET_IRQCHIP. Both inject asynchronously, so both are polled.
    @Test(arguments: Backend.available)
    func signalledIrqfdRaisesThePICRequestBit(_ backend: Backend) throws {
        let vm = try backend.hypervisor().createVM()
        try vm.createIrqchip()
        let eventFD = try EventFD()
        try vm.registerIRQFD(eventFD, gsi: 3)
        #expect(try vm.irqchipState(.picMaster).bytes[1] & 0x08 == 0)
        try eventFD.signal()
        var irr: UInt8 = 0
        for _ in 0..<500 where irr & 0x08 == 0 {
            irr = try vm.irqchipState(.picMaster).bytes[1]
            if irr & 0x08 == 0 { usleep(1000) }
        }
        #expect(irr & 0x08 != 0)
        // The counter was consumed by the injection.
        #expect(!eventFD.isSignaled())
    }

    @Test func signalledIrqfdGivesTheSameIrqchipStateOnBoth() throws {
        try expectSameTrace { hypervisor in
            let vm = try hypervisor.createVM()
            try vm.createIrqchip()
            let edge = try EventFD()
            let level = try EventFD()
            let resample = try EventFD()
            try vm.registerIRQFD(edge, gsi: 4)
            try vm.registerIRQFD(level, gsi: 11, resample: resample)
            try edge.signal()
            try level.signal()
            var master = ""
            var slave = ""
            for _ in 0..<500 {
                master = chipState(vm, .picMaster)
                slave = chipState(vm, .picSlave)
                // The IRR bytes of the states just read: both injections done.
                if master.dropFirst(2).prefix(2) == "14" && slave.dropFirst(2).prefix(2) == "08" { break }
                usleep(1000)
            }
            return [("master", master), ("slave", slave), ("ioapic", chipState(vm, .ioapic))]
        }
    }

    @Test func ioeventfdRulesAgree() throws {
        try expectSameTrace { hypervisor in
            let vm = try hypervisor.createVM()
            let first = try EventFD()
            let second = try EventFD()
            let backend = hypervisor.handle.backend
            func ioeventfd(_ fd: Int32, _ address: UInt64, _ length: UInt32, flags: UInt32 = 0, datamatch: UInt64 = 0) -> String {
                var args = kvm_ioeventfd()
                args.fd = fd
                args.addr = address
                args.len = length
                args.flags = flags
                args.datamatch = datamatch
                return rawOutcome(backend, vm.rawDescriptor, KVMRequest.ioeventfd.number, &args).description
            }
            let match = KVM_IOEVENTFD_FLAG_DATAMATCH
            let pio = KVM_IOEVENTFD_FLAG_PIO
            let deassign = KVM_IOEVENTFD_FLAG_DEASSIGN
            var trace: [(String, String)] = (0...9).map { ("length \($0)", ioeventfd(first.rawValue, 0x1000 + UInt64($0) * 0x10, UInt32($0))) }
            trace += [
                ("datamatch without length", ioeventfd(first.rawValue, 0x2000, 0, flags: match)),
                ("range wraps", ioeventfd(first.rawValue, ~0, 4)),
                ("fast MMIO flag", ioeventfd(first.rawValue, 0x2000, 4, flags: 1 << 4)),
                ("unknown flag", ioeventfd(first.rawValue, 0x2100, 4, flags: 1 << 5)),
                ("virtio-ccw flag", ioeventfd(first.rawValue, 0x2000, 4, flags: 1 << 3)),
                ("bad descriptor", ioeventfd(9999, 0x2000, 4)),
                ("duplicate", ioeventfd(first.rawValue, 0x1010, 1)),
                ("duplicate from another eventfd", ioeventfd(second.rawValue, 0x1010, 1)),
                ("other length at the same address", ioeventfd(second.rawValue, 0x1010, 2)),
                ("same address as PIO", ioeventfd(first.rawValue, 0x1010, 1, flags: pio)),
                ("datamatch 1", ioeventfd(first.rawValue, 0x3000, 4, flags: match, datamatch: 1)),
                ("datamatch 2", ioeventfd(first.rawValue, 0x3000, 4, flags: match, datamatch: 2)),
                ("datamatch 2 again", ioeventfd(second.rawValue, 0x3000, 4, flags: match, datamatch: 2)),
                ("wildcard over datamatch", ioeventfd(first.rawValue, 0x3000, 4)),
                ("any length over datamatch", ioeventfd(first.rawValue, 0x3000, 0)),
                ("deassign unknown", ioeventfd(first.rawValue, 0xD000_0000, 4, flags: deassign)),
                ("deassign with the wrong eventfd", ioeventfd(second.rawValue, 0x3000, 4, flags: deassign | match, datamatch: 1)),
                ("deassign as a wildcard", ioeventfd(first.rawValue, 0x3000, 4, flags: deassign)),
                ("deassign datamatch 1", ioeventfd(first.rawValue, 0x3000, 4, flags: deassign | match, datamatch: 1)),
                ("deassign it again", ioeventfd(first.rawValue, 0x3000, 4, flags: deassign | match, datamatch: 1)),
                ("deassign any length", ioeventfd(first.rawValue, 0x1000, 0, flags: deassign)),
                ("deassign PIO as MMIO", ioeventfd(first.rawValue, 0x1010, 1, flags: deassign | pio)),
                ("deassign bad descriptor", ioeventfd(9999, 0x1010, 1, flags: deassign)),
                ("deassign with bad length", ioeventfd(first.rawValue, 0x1030, 3, flags: deassign)),
            ]
            return trace
        }
    }

    @Test func coalescedZoneRulesAgree() throws {
        try expectSameTrace { hypervisor in
            let vm = try hypervisor.createVM()
            let backend = hypervisor.handle.backend
            func zone(_ request: KVMRequest, _ address: UInt64, _ size: UInt32, pio: UInt32 = 0) -> String {
                var zone = kvm_coalesced_mmio_zone()
                zone.addr = address
                zone.size = size
                zone.pio = pio
                return rawOutcome(backend, vm.rawDescriptor, request.number, &zone).description
            }
            return [
                ("register", zone(.registerCoalescedMMIO, 0x20000, 0x1000)),
                ("register it again", zone(.registerCoalescedMMIO, 0x20000, 0x1000)),
                ("pio 2", zone(.registerCoalescedMMIO, 0x300, 4, pio: 2)),
                ("PIO", zone(.registerCoalescedMMIO, 0x300, 4, pio: 1)),
                ("size 0", zone(.registerCoalescedMMIO, 0x40000, 0)),
                ("unregister unknown", zone(.unregisterCoalescedMMIO, 0x90000, 0x1000)),
                ("unregister pio 2", zone(.unregisterCoalescedMMIO, 0x300, 4, pio: 2)),
                ("unregister", zone(.unregisterCoalescedMMIO, 0x20000, 0x1000)),
            ]
        }
    }
}
