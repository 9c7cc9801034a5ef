{
  id: .request_id, name: .person.name, email: .person.email, phone: .person.phone,
  company: .company.name, title: .person.title, country: .company.country,
  score: .confidence, kind: .document_type, summary: .summary
}
