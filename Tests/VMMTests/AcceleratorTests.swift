import Accelerators
import Foundation
import KVM
import Testing

@Test func openingSoftGivesSoftKVM() throws {
    let hypervisor = try Hypervisor.open(.soft)
    #expect(hypervisor.accelerator == .soft)
    #expect(try hypervisor.apiVersion() == 12)
}

@Test func automaticTakesAHardwareHostWhereItIsUsableAndSoftKVMOtherwise() throws {
    let hostUsable = (try? Hypervisor(accelerator: .host)) != nil
    let hardware = try Hypervisor.open(.automatic, hostKind: .hardware(module: "kvm_intel"))
    #expect(hardware.accelerator == (hostUsable ? .host : .soft))
    let paravirtual = try Hypervisor.open(.automatic, hostKind: .paravirtual(module: "kvm_pvm"))
    #expect(paravirtual.accelerator == .soft)
    let probed = try Hypervisor.open(.automatic)
    #expect(probed.accelerator == (hostUsable && HostKVMKind.probe().isPreferredOverSoft ? .host : .soft))
}

@Test func hostKindIsReadFromTheVendorModule() throws {
    let modules = "/tmp/swiftkvm-modules-\(getpid())"
    defer { _ = try? FileManager.default.removeItem(atPath: modules) }
    try FileManager.default.createDirectory(atPath: modules + "/kvm", withIntermediateDirectories: true)
    #expect(HostKVMKind.probe(modules: modules) == .unknown)
    try FileManager.default.createDirectory(atPath: modules + "/kvm_pvm", withIntermediateDirectories: true)
    #expect(HostKVMKind.probe(modules: modules) == .paravirtual(module: "kvm_pvm"))
    #expect(!HostKVMKind.probe(modules: modules).isPreferredOverSoft)
    try FileManager.default.createDirectory(atPath: modules + "/kvm_amd", withIntermediateDirectories: true)
    #expect(HostKVMKind.probe(modules: modules) == .hardware(module: "kvm_amd"))
}

/// Module KVM cannot name SoftKVM (it is built on KVM): asking it for soft
/// says where SoftKVM is opened instead of pretending.
@Test func kvmModuleAloneRefusesSoftAndSaysWhereToOpenIt() throws {
    let error = try #require(throws: KVMError.self) { try Hypervisor(accelerator: .soft) }
    #expect(error.errno == .operationNotSupportedByDevice)
    #expect(error.message.contains("Hypervisor.open(.soft)"))
}
